"""One bad entry never stops a batch: a symlink loop, a decompression-bomb PNG, a zero-byte file, a folder
and a folder loop each end as a row with its reason, in the folder listing, in `kedro run --pipeline=inference`
and in the MLflow pyfunc model (both use :func:`~defect_pipeline.ml.inference.entry_status`).

Against the old code the listing (and with it the Kedro run) raised ``RuntimeError: Symlink loop from
'.../b.png'`` and predicted nothing; the pyfunc model reported the loop only as an OSError from reading.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from defect_pipeline.ml.inference import entry_status, list_images, predict_files
from defect_pipeline.ml.labels import LabelSpace
from defect_pipeline.ml.predict import Predictor
from defect_pipeline.tracking.pyfunc import predict_frame
from tests.conftest import make_tiny_package

EXTENSIONS = [".png", ".jpg"]
GOOD = ["good_0.png", "good_1.png", "good_2.jpg"]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(path: Path, side: int = 40_000) -> Path:
    """A few hundred bytes that declare a ``side`` x ``side`` greyscale image (1.6 G pixels)."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (side + 1) * 4)  # a start of the pixel data; it is never decoded
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", rows) + _chunk(b"IEND", b""))
    return path


def hostile_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    (root / "sub").mkdir(parents=True)
    for name in GOOD:
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / name)
    os.symlink("b.png", root / "a.png")      # a -> b.png, b.png -> a: a loop of two links
    os.symlink("a.png", root / "b.png")
    bomb_png(root / "bomb.png")
    (root / "empty.png").write_bytes(b"")
    os.symlink("..", root / "sub" / "loop")   # a folder loop (matters when links are followed)
    return root


EXPECTED = {"a.png": ("error", "symlink loop"), "b.png": ("error", "symlink loop"),
            "bomb.png": ("error", "too_large"), "empty.png": ("error", "empty_file"),
            **{name: ("ok", "") for name in GOOD}}


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor(make_tiny_package(LabelSpace(("crack", "spot"), has_good=True)))


@pytest.mark.parametrize("follow_symlinks", [False, True])
def test_every_entry_of_a_hostile_folder_is_one_row_with_its_reason(tmp_path: Path, predictor: Predictor,
                                                                   follow_symlinks: bool) -> None:
    files, ignored = list_images(hostile_folder(tmp_path / "in"), extensions=EXTENSIONS,
                                 follow_symlinks=follow_symlinks)
    result = predict_files(files, predictor, batch_size=2)
    frame = result.predictions.set_index("relative_path")
    assert sorted(frame.index) == sorted(EXPECTED)  # one row per entry, the loop folder not walked again
    for name, (status, reason) in EXPECTED.items():
        assert frame.loc[name, "status"] == status, (name, frame.loc[name, "error"])
        assert reason in frame.loc[name, "error"]
    assert sorted(result.masks) == ["good_0", "good_1", "good_2"]
    if follow_symlinks:
        assert any(entry.startswith("sub/loop/ (already walked") for entry in ignored)


@pytest.mark.parametrize(("make", "status", "reason"), [
    (lambda d: os.symlink("x.png", d / "x.png") or d / "x.png", "error", "symlink loop"),
    (lambda d: os.symlink("gone.png", d / "l.png") or d / "l.png", "error", "broken symlink"),
    (lambda d: (d / "e.png").write_bytes(b"") or d / "e.png", "error", "empty_file"),
    (lambda d: d, "error", "not a regular file"),
    (lambda d: d / "missing.png", "error", "no such file"),
])
def test_entry_status_names_what_cannot_be_read(tmp_path: Path, make, status: str, reason: str) -> None:
    got = entry_status(make(tmp_path))
    assert got[0] == status and reason in got[1]


def test_the_pyfunc_model_gives_each_entry_its_row(tmp_path: Path, predictor: Predictor) -> None:
    root = hostile_folder(tmp_path / "in")
    names = [*GOOD, "a.png", "bomb.png", "empty.png", "sub"]
    frame = predict_frame(predictor, pd.DataFrame({"path": [str(root / n) for n in names]}), batch_size=2,
                          mask_format="array")  # masks as arrays (the REST default is a base64 PNG)
    assert len(frame) == len(names)
    by_name = dict(zip(names, frame.to_dict("records"), strict=True))
    for name in GOOD:
        assert by_name[name]["status"] == "ok" and by_name[name]["mask"].shape == (40, 48)
    assert "symlink loop" in by_name["a.png"]["error"] and "too_large" in by_name["bomb.png"]["error"]
    assert "empty_file" in by_name["empty.png"]["error"] and "not a regular file" in by_name["sub"]["error"]
    assert {by_name[n]["status"] for n in ("a.png", "bomb.png", "empty.png", "sub")} == {"error"}


@pytest.mark.slow
def test_kedro_run_inference_over_a_hostile_folder_writes_every_row(kedro_project: Path, tmp_path: Path) -> None:
    from tests.conftest import run_kedro

    package = make_tiny_package(LabelSpace(("crack", "spot"), has_good=True)).save(tmp_path / "model")
    folder = hostile_folder(tmp_path / "in")
    run_kedro(kedro_project, "inference", params={"inference": {"input_dir": str(folder), "checkpoint": str(package)}})
    table = pd.read_csv(kedro_project / "data/07_model_output/predictions.csv").set_index("relative_path")
    assert {name: table.loc[name, "status"] for name in EXPECTED} == {n: s for n, (s, _) in EXPECTED.items()}
    assert len(table) == len(EXPECTED)
    assert sorted(p.name for p in (kedro_project / "data/07_model_output/masks").iterdir()) == \
        ["good_0.png", "good_1.png", "good_2.png"]
