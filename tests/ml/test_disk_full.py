"""A full disk (``OSError(ENOSPC)``) while a checkpoint or a report is written: the previous file stays
intact, no temp file is left, and the error names the file, the free space and what to do.

The fault is injected where a real full disk shows up: a write that gets half of its bytes out and
then fails, or the ``fsync`` that flushes delayed allocations. Against the code before the disk-full
handling (the plain ``OSError`` of ``torch.save``; kedro-datasets' report datasets opening the final
path for writing) these tests fail: the error named neither the file nor the free space, and a
report's previous file was truncated to the half that got written.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
from collections import namedtuple
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from fsspec.implementations.local import LocalFileOpener  # noqa: E402
from kedro.io import AbstractDataset, DatasetError  # noqa: E402

from defect_pipeline.ml.checkpoint import CheckpointStore  # noqa: E402
from tests.conftest import REPO_ROOT  # noqa: E402
from tests.ml.test_engine import InterruptAfter, config, run  # noqa: E402

FREE = 123_456  # what the injected shutil.disk_usage reports
Usage = namedtuple("Usage", "total used free")


def _no_space() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture
def reported_free_space(monkeypatch: pytest.MonkeyPatch) -> int:
    """shutil.disk_usage answers FREE bytes free, so the message can be checked exactly."""
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10 * FREE, 9 * FREE, FREE))
    return FREE


def _assert_names_path_and_free_space(error: BaseException, path: Path, free: int) -> None:
    message = str(error)
    assert str(path) in message, message
    assert f"({free:,} bytes) free" in message, message
    assert "free some space" in message.lower(), message


@pytest.mark.parametrize("where", ["write", "fsync"])
def test_disk_full_in_a_checkpoint_write_keeps_the_previous_file_and_names_path_and_free_space(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reported_free_space: int, where: str) -> None:
    store = CheckpointStore(str(tmp_path))
    store.save("last", {"epoch": 1, "model": {"w": torch.ones(4)}})
    previous = store.last_path.read_bytes()
    if where == "write":
        real_save = torch.save

        def half_then_full(obj, handle, *args, **kwargs):
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            raise _no_space()

        monkeypatch.setattr(torch, "save", half_then_full)
    else:
        def fsync_full(fd: int) -> None:  # delayed allocation: the bytes only fail to fit when flushed
            raise _no_space()

        monkeypatch.setattr(os, "fsync", fsync_full)

    with pytest.raises(OSError) as caught:
        store.save("last", {"epoch": 2, "model": {"w": torch.zeros(4)}})
    assert caught.value.errno == errno.ENOSPC
    _assert_names_path_and_free_space(caught.value, store.last_path, reported_free_space)
    assert store.last_path.read_bytes() == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # the temp file is gone


def test_an_epoch_whose_checkpoint_hits_a_full_disk_is_trained_again_after_space_is_freed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reported_free_space: int) -> None:
    """The engine: epoch 2's ``last`` fails with ENOSPC; ``last.pt`` still holds epoch 1 and the rerun resumes there."""
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, config(epochs=2), training_logger=InterruptAfter(1))
    epoch1 = (tmp_path / "last.pt").read_bytes()
    real_save = torch.save

    def full_disk(obj, handle, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("kind") == "last" and obj.get("epoch") == 2:
            handle.write(b"half a checkpoint")
            raise _no_space()
        return real_save(obj, handle, *args, **kwargs)

    with monkeypatch.context() as local:
        local.setattr(torch, "save", full_disk)
        with pytest.raises(OSError) as caught:
            run(tmp_path, config(epochs=2))
    _assert_names_path_and_free_space(caught.value, tmp_path / "last.pt", reported_free_space)
    assert (tmp_path / "last.pt").read_bytes() == epoch1
    assert not list(tmp_path.glob(".*.tmp"))
    _, result = run(tmp_path, config(epochs=2))  # space freed: the run continues from epoch 1
    assert result.resumed_from_epoch == 1 and result.epochs_run == 2


def _report_entries() -> dict[str, dict]:
    """The file dataset of each catalog entry under data/08_reporting, one per dataset type (the default
    environment's data root, ``${globals:data_root}`` = ``data``)."""
    entries = yaml.safe_load((REPO_ROOT / "conf/base/catalog.yml").read_text())
    chosen: dict[str, dict] = {}
    for name, entry in entries.items():
        inner = entry["dataset"] if isinstance(entry.get("dataset"), dict) else entry
        filepath = str(inner.get("filepath", "")).replace("${globals:data_root}", "data")
        if "{" in name or not filepath.startswith("data/08_reporting/"):
            continue
        chosen.setdefault(inner["type"].rsplit(".", 1)[-1].replace("Atomic", ""),
                          {"name": name, **inner, "filepath": filepath})
    return chosen


REPORTS = _report_entries()


def _report_data(kind: str):
    if kind == "JSONDataset":
        return {"rows": list(range(200)), "status": "ok"}
    if kind == "CSVDataset":
        return pd.DataFrame({"a": range(200), "b": ["x"] * 200})
    if kind == "TextDataset":
        return "# report\n" + "line\n" * 200
    if kind == "MatplotlibDataset":
        figure, axis = plt.subplots(figsize=(2, 2))
        axis.plot(range(10))
        return figure
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["CSVDataset", "JSONDataset", "MatplotlibDataset", "TextDataset"])
def test_disk_full_in_a_report_write_keeps_the_previous_report_and_names_path_and_free_space(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reported_free_space: int, kind: str) -> None:
    """Each report dataset type of the catalog, as configured there, against a write that fails half-way."""
    assert kind in REPORTS, f"no report of type {kind} under data/08_reporting in the catalog any more"
    config_ = {k: v for k, v in REPORTS[kind].items() if k != "name"}
    target = tmp_path / Path(config_["filepath"]).name
    dataset = AbstractDataset.from_config(REPORTS[kind]["name"], {**config_, "filepath": str(target)})
    dataset.save(_report_data(kind))
    previous = target.read_bytes()
    real_write = LocalFileOpener.write

    def half_then_full(self, data, *args, **kwargs):
        if target.name in str(self.path):
            real_write(self, data[: len(data) // 2])
            raise _no_space()
        return real_write(self, data, *args, **kwargs)

    monkeypatch.setattr(LocalFileOpener, "write", half_then_full)
    with pytest.raises(DatasetError) as caught:  # Kedro wraps a dataset's error in a DatasetError
        dataset.save(_report_data(kind))
    assert target.read_bytes() == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]
    assert caught.value.__cause__.errno == errno.ENOSPC
    _assert_names_path_and_free_space(caught.value, target, reported_free_space)
