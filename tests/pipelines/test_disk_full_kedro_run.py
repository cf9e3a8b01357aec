"""A full disk through `kedro run`: a stage whose checkpoint write fails with ENOSPC, and a data run whose report
write fails with ENOSPC. The previous checkpoints and report stay intact, the error names the file and the free
space, and the MLflow runs end FAILED.

Against the code before the disk-full handling both tests fail: the checkpoint error was the bare
``[Errno 28] No space left on device`` (no file, no free space), and ``data_report.json`` was left
truncated to the half that got written.
"""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

import pytest
import torch
from fsspec.implementations.local import LocalFileOpener
from kedro.io import DatasetError

from tests.conftest import TINY, copy_project, make_project, pipeline_runs, run_kedro

pytestmark = pytest.mark.slow


def _no_space() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project whose data pipeline and stage1 ran once (copied by each test)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        project = make_project(tmp_path_factory.mktemp("disk_full") / "project", monkeypatch)
        run_kedro(project, "data", params=TINY)
        run_kedro(project, "stage1", params=TINY)
    return project


def _statuses(project: Path, pipeline: str) -> list[str]:
    return [r.info.status for r in sorted(pipeline_runs(project, pipeline), key=lambda r: r.info.start_time)]


def _assert_names_path_and_free_space(message: str, path: Path) -> None:
    assert f"while writing {path}" in message, message
    assert "bytes) free" in message and "Free some space" in message, message


def test_disk_full_in_a_checkpoint_write_fails_the_stage_and_keeps_the_previous_checkpoints(
        trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = copy_project(trained, tmp_path / "project", monkeypatch)
    folder = project / "data/06_models/stage1"
    before = {name: (folder / name).read_bytes() for name in ("best.pt", "last.pt")}
    real_save = torch.save

    def half_then_full(obj, handle, *args, **kwargs):
        if not (isinstance(obj, dict) and obj.get("kind") in ("best", "last")):
            return real_save(obj, handle, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise _no_space()

    monkeypatch.setattr(torch, "save", half_then_full)
    with pytest.raises(OSError) as caught:
        run_kedro(project, "stage1", params={**TINY, "stage1": {**TINY["stage1"], "resume": False}})
    assert caught.value.errno == errno.ENOSPC
    _assert_names_path_and_free_space(str(caught.value), folder / "best.pt")  # epoch 1 improves: best first
    assert {name: (folder / name).read_bytes() for name in before} == before
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]  # no temp file left
    assert _statuses(project, "stage1") == ["FINISHED", "FINISHED", "FAILED", "FAILED"]  # parent + stage child


def test_disk_full_in_a_report_write_fails_the_run_and_keeps_the_previous_report(
        trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = copy_project(trained, tmp_path / "project", monkeypatch)
    report = project / "data/08_reporting/data_report.json"
    before = report.read_bytes()
    real_write = LocalFileOpener.write

    def half_then_full(self, data, *args, **kwargs):
        if "data_report.json" in str(self.path):
            real_write(self, data[: len(data) // 2])
            raise _no_space()
        return real_write(self, data, *args, **kwargs)

    monkeypatch.setattr(LocalFileOpener, "write", half_then_full)
    with pytest.raises(DatasetError) as caught:
        run_kedro(project, "data", params=TINY)
    assert report.read_bytes() == before
    assert not [p.name for p in report.parent.iterdir() if p.name.endswith(".tmp")]
    _assert_names_path_and_free_space(str(caught.value), report)
    assert _statuses(project, "data") == ["FINISHED", "FAILED"]
