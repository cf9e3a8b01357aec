"""Batch inference over awkward folders, and the ONNX export with its parity check."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from defect_pipeline.ml.export import export_onnx
from defect_pipeline.ml.inference import lazy_mask, lazy_overlay, list_images, predict_files
from defect_pipeline.ml.labels import LabelSpace
from defect_pipeline.ml.package import ModelPackage
from defect_pipeline.ml.predict import Predictor
from tests.conftest import make_tiny_package

LABELS = LabelSpace(("crack", "spot"), has_good=True)
EXTENSIONS = [".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"]


@pytest.fixture(scope="module")
def package() -> ModelPackage:
    return make_tiny_package(LABELS)


def awkward_folder(root: Path, outside: Path) -> Path:
    """A corrupt file, an RGBA PNG, a grayscale image, an odd-sized JPEG, a 16-bit TIFF, a name with a
    space and non-ASCII characters, a non-image file, a hidden file and a symlink leaving the folder."""
    rng = np.random.default_rng(0)
    (root / "sub dir").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (50, 70, 4), dtype=np.uint8), "RGBA").save(root / "rgba.png")
    Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8), "L").save(root / "sub dir" / "grau ü.png")
    Image.fromarray(rng.integers(0, 256, (33, 97, 3), dtype=np.uint8)).save(root / "odd.jpg")
    Image.fromarray(rng.integers(0, 65535, (30, 30), dtype=np.uint16)).save(root / "deep.tif")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"")
    outside.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(outside)
    os.symlink(outside, root / "link.png")
    return root


def test_every_file_becomes_a_row_and_readable_ones_are_predicted(package: ModelPackage, tmp_path: Path) -> None:
    root = awkward_folder(tmp_path / "in", tmp_path / "elsewhere" / "x.png")
    files, ignored = list_images(root, extensions=EXTENSIONS)
    assert ignored == ["notes.txt"]
    assert sorted(files["relative_path"]) == ["corrupt.png", "deep.tif", "link.png", "odd.jpg", "rgba.png",
                                              "sub dir/grau ü.png"]
    result = predict_files(files, Predictor(package), batch_size=2)
    frame = result.predictions.set_index("relative_path")
    assert frame.loc["corrupt.png", "status"] == "error" and "corrupt.png" in frame.loc["corrupt.png", "error"]
    assert frame.loc["link.png", "status"] == "skipped" and "outside the input folder" in frame.loc["link.png", "error"]
    ok = frame[frame["status"] == "ok"]
    assert sorted(ok.index) == ["deep.tif", "odd.jpg", "rgba.png", "sub dir/grau ü.png"]
    assert (ok.loc["odd.jpg", "width"], ok.loc["odd.jpg", "height"]) == (97, 33)
    assert set(ok["label"]) <= set(LABELS.image_classes)
    assert result.images_per_s > 0
    # masks: one per predicted image, at its own size, named after its relative path
    assert sorted(result.masks) == ["deep", "odd", "rgba", "sub dir/grau ü"]
    assert np.asarray(Image.open(io.BytesIO(result.masks["odd"]))).shape == (33, 97)
    assert lazy_mask(result.masks["rgba"])().size == (70, 50)
    overlay = lazy_overlay(str(root / "rgba.png"), result.masks["rgba"])()
    assert overlay.size == (70, 50) and overlay.mode == "RGB"


def test_followed_symlinks_are_predicted(package: ModelPackage, tmp_path: Path) -> None:
    root = awkward_folder(tmp_path / "in", tmp_path / "elsewhere" / "x.png")
    files, _ = list_images(root, extensions=EXTENSIONS, follow_symlinks=True)
    frame = predict_files(files, Predictor(package)).predictions.set_index("relative_path")
    assert frame.loc["link.png", "status"] == "ok"


def test_a_missing_input_folder_names_the_parameter(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="inference.input_dir"):
        list_images(tmp_path / "nope", extensions=EXTENSIONS)


def test_onnx_export_matches_pytorch_and_serves_inference(package: ModelPackage, tmp_path: Path) -> None:
    folder = package.save(tmp_path / "model")
    exported = export_onnx(package, tolerance=1e-3)
    exported.save(folder)
    report = exported.report
    assert report["parity_ok"] and report["dynamic_batch"]
    assert max(report["max_abs_difference"].values()) < 1e-3
    assert json.loads((folder / "model.onnx.json").read_text())["weights_sha256"] == package.weights_sha256
    loaded = ModelPackage.load(folder)
    images = [np.random.default_rng(i).integers(0, 256, (48 + i, 64, 3), dtype=np.uint8) for i in range(3)]
    eager = Predictor(loaded).probabilities(images)
    onnx = Predictor(loaded, backend="onnx").probabilities(images)
    for a, b in zip(eager, onnx, strict=True):
        np.testing.assert_allclose(a.class_probs, b.class_probs, atol=1e-4)
        np.testing.assert_allclose(a.seg_probs, b.seg_probs, atol=1e-4)


def test_a_stale_or_missing_onnx_export_is_refused(package: ModelPackage, tmp_path: Path) -> None:
    folder = package.save(tmp_path / "model")
    with pytest.raises(FileNotFoundError, match="kedro run --pipeline=export"):
        Predictor(ModelPackage.load(folder), backend="onnx")
    export_onnx(package).save(folder)
    retrained = make_tiny_package(LABELS, seed=1)
    retrained.save(folder)  # new weights, old model.onnx still there
    with pytest.raises(ValueError, match="stale export"):
        Predictor(ModelPackage.load(folder), backend="onnx")


def test_predictions_table_has_one_row_per_file_even_when_nothing_is_readable(package: ModelPackage,
                                                                              tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"nope")
    files, _ = list_images(tmp_path, extensions=EXTENSIONS)
    frame = predict_files(files, Predictor(package)).predictions
    assert isinstance(frame, pd.DataFrame) and list(frame["status"]) == ["error"]
