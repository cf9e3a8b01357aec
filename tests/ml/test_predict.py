"""Model packages and the Predictor: round trip, any image size/mode, thresholds that change results."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from defect_pipeline.ml.augment import build_transform
from defect_pipeline.ml.labels import LabelSpace
from defect_pipeline.ml.package import ModelPackage
from defect_pipeline.ml.postprocess import Thresholds, remove_small_regions
from defect_pipeline.ml.predict import Predictor, as_rgb_uint8
from tests.conftest import make_tiny_package

LABELS = LabelSpace(("crack", "spot"), has_good=True)


def _package(seg_mode: str = "multiclass", thresholds: Thresholds | None = None) -> ModelPackage:
    return make_tiny_package(LABELS, seg_mode=seg_mode, thresholds=thresholds)


@pytest.fixture(scope="module")
def package() -> ModelPackage:
    return _package()


def test_package_round_trip_rebuilds_the_same_network(package: ModelPackage, tmp_path: Path) -> None:
    folder = package.save(tmp_path / "model")
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "thresholds.json", "weights.safetensors"]
    meta = json.loads((folder / "model.json").read_text())
    assert meta["backbone"] == "resnet18" and meta["labels"] == LABELS.to_dict() and meta["manifest_hash"] == "abc"
    loaded = ModelPackage.load(folder)
    x = torch.randn(2, 3, 64, 64)
    a, b = package.build_model()(x), loaded.build_model()(x)
    torch.testing.assert_close(a.cls_logits, b.cls_logits)
    torch.testing.assert_close(a.seg_logits, b.seg_logits)


def test_a_package_without_weights_names_the_missing_file(tmp_path: Path) -> None:
    (tmp_path / "model.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="weights.safetensors"):
        ModelPackage.load(tmp_path)


def test_preprocessing_equals_the_training_evaluation_transform(package: ModelPackage) -> None:
    predictor = Predictor(package)
    image = np.random.default_rng(0).integers(0, 256, (45, 70, 3), dtype=np.uint8)
    expected = build_transform(None, image_size=64, train=False)(image=image, mask=np.zeros((45, 70), np.uint8))
    torch.testing.assert_close(predictor.preprocess(image), expected["image"], atol=1e-5, rtol=1e-5)


def test_images_of_any_size_and_mode_give_masks_at_their_own_size(package: ModelPackage) -> None:
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (40, 60), dtype=np.uint8),             # grayscale
              rng.integers(0, 256, (33, 77, 4), dtype=np.uint8),          # RGBA, odd size
              rng.integers(0, 65536, (64, 64, 3), dtype=np.uint16),       # 16-bit
              rng.random((20, 30, 1)).astype(np.float32)]                 # float in [0, 1]
    predictions = Predictor(package).predict(images)
    for image, prediction in zip(images, predictions, strict=True):
        assert prediction.mask.shape == image.shape[:2]
        assert set(np.unique(prediction.mask)) <= {0, 1, 2}
        assert sum(prediction.scores.values()) == pytest.approx(1.0, abs=1e-5)
        assert prediction.label in LABELS.image_classes
        assert prediction.defect_area == int((prediction.mask > 0).sum())


def test_thresholds_decide_label_and_mask(package: ModelPackage) -> None:
    image = np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    always = Predictor(package, thresholds=Thresholds(image=0.0, pixel=0.0)).predict([image])[0]
    never = Predictor(package, thresholds=Thresholds(image=1.0, pixel=1.0)).predict([image])[0]
    assert always.label in LABELS.defect_classes and always.defect_area == 32 * 32
    assert never.label == "good" and never.defect_area == 0
    assert always.scores == pytest.approx(never.scores)


def test_binary_packages_predict_a_single_defect_value() -> None:
    prediction = Predictor(_package("binary"), thresholds=Thresholds(pixel=0.0)).predict(
        [np.zeros((16, 24, 3), np.uint8)])[0]
    assert prediction.mask.shape == (16, 24) and set(np.unique(prediction.mask)) == {1}


def test_min_area_removes_specks_but_keeps_regions() -> None:
    mask = np.zeros((20, 20), np.uint8)
    mask[1, 1] = 2                 # a 1-pixel speck
    mask[10:15, 10:15] = 1         # a 25-pixel region
    cleaned = remove_small_regions(mask, 5)
    assert cleaned[1, 1] == 0 and (cleaned[10:15, 10:15] == 1).all()
    assert remove_small_regions(mask, 0) is mask


def test_bad_thresholds_and_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="thresholds.pixel"):
        Thresholds(pixel=1.5)
    with pytest.raises(ValueError, match="shape"):
        as_rgb_uint8(np.zeros((2, 3, 4, 5)))
