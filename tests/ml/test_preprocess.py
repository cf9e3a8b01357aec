"""Train/serve parity: the backbone's own normalisation, stored in the package and rebuilt at inference.

Before this, ``ml/augment.py`` and ``ml/predict.py`` hard-coded ImageNet mean/std and a bilinear resize
for every backbone, and the predictor re-implemented the evaluation transform in OpenCV: a ViT with
``augreg`` weights (timm: mean/std 0.5, bicubic) was trained and served with the wrong statistics.
``test_the_package_rebuilds_the_training_eval_transform`` fails on that code (the package's mean is
ImageNet's and the predictor's tensor differs from the validation tensor).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from defect_pipeline.config import AugmentationParams, DataParams, ModelParams, RuntimeParams, StageParams, \
    TrainerParams
from defect_pipeline.ml.augment import IMAGENET_MEAN, IMAGENET_STD
from defect_pipeline.ml.checkpoint import CheckpointStore
from defect_pipeline.ml.labels import LabelSpace
from defect_pipeline.ml.package import ModelPackage
from defect_pipeline.ml.predict import Predictor
from defect_pipeline.ml.preprocess import EVAL_TRANSFORM_KEY, resolve_preprocessing
from defect_pipeline.ml.stage import build_training_job
from tests.conftest import make_tiny_package, prepared_demo

pytestmark = pytest.mark.filterwarnings("ignore:.*random initialisation:UserWarning")


def test_the_backbone_decides_mean_std_and_interpolation() -> None:
    vit = resolve_preprocessing("vit_base_patch16_224.augreg_in21k")
    assert vit.mean == (0.5, 0.5, 0.5) and vit.std == (0.5, 0.5, 0.5) and vit.interpolation == "bicubic"
    resnet = resolve_preprocessing("resnet18")
    assert resnet.mean == IMAGENET_MEAN and resnet.std == IMAGENET_STD
    assert "resnet18" in resnet.source


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("demo") / "raw"
    _, _, manifest, scan_summary = prepared_demo(root, images_per_class=3, good_images=3, image_size=80)
    return str(root), manifest, list(scan_summary["classes"])


def test_the_package_rebuilds_the_training_eval_transform(demo, tmp_path: Path) -> None:
    """The stage's validation transform and the package's (saved, reloaded) give identical tensors."""
    root, manifest, classes = demo
    plan = build_training_job(
        manifest, raw_root=root, defect_classes=classes, checkpoints=CheckpointStore(str(tmp_path / "ckpt")),
        model=ModelParams.model_validate({"backbone": "vit_tiny_patch16_224.augreg_in21k", "image_size": 64,
                                          "decoder_channels": 16, "input_mode": "resize"}),
        stage=StageParams(epochs=1, batch_size=2, max_batches_per_epoch=1, warmup_epochs=0.0),
        augmentation=AugmentationParams(), data=DataParams(raw_root=root), runtime=RuntimeParams(),
        trainer=TrainerParams(accelerator="cpu", precision="fp32"), stage_name="stage1")
    job = plan.job
    state = {"model": job.model.state_dict(), "model_meta": job.meta["model_meta"], "labels": job.meta["labels"],
             "config": job.meta["config"], "stage": "stage1", "epoch": 1}
    folder = ModelPackage.from_checkpoint(state, source="best.pt").save(tmp_path / "package")
    meta = json.loads((folder / "model.json").read_text())
    assert meta["mean"] == [0.5, 0.5, 0.5] and meta["interpolation"] == "bicubic" and EVAL_TRANSFORM_KEY in meta

    predictor = Predictor.from_folder(folder)
    for seed, shape in ((0, (80, 80, 3)), (1, (97, 133, 3))):  # a demo-sized and an odd-sized image
        image = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
        expected = job.val_set.transform(image=image, mask=np.zeros(shape[:2], np.uint8))["image"]
        assert torch.equal(predictor.preprocess(image), expected)
    image, _ = job.val_set.read_sample(0)
    assert torch.equal(predictor.preprocess(image), job.val_set[0]["image"])


def test_an_old_package_without_the_transform_still_loads(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Packages written before the transform was stored: ImageNet mean/std, bilinear resize, and a note."""
    import cv2

    package = make_tiny_package(LabelSpace(("crack",), has_good=True))
    package.meta.pop(EVAL_TRANSFORM_KEY, None)
    folder = package.save(tmp_path / "old")
    with caplog.at_level(logging.INFO, logger="defect_pipeline.ml.predict"):
        predictor = Predictor.from_folder(folder)
    assert "no stored evaluation transform" in caplog.text
    image = np.random.default_rng(2).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    resized = cv2.resize(image, (64, 64), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    mean, std = (np.asarray(v, np.float32) * 255.0 for v in (IMAGENET_MEAN, IMAGENET_STD))
    old = (resized - mean) / std  # what predict.py did before
    np.testing.assert_allclose(predictor.preprocess(image).numpy(), old.transpose(2, 0, 1), atol=1e-5)
    assert len(predictor.predict([image])) == 1
