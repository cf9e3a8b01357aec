"""A training stage resolves ``model.input_mode`` and records it where prediction and people read it.

Tiny stages (resnet18 at 64 px, one batch) on the synthetic demo data, run through
:func:`~defect_pipeline.ml.stage.build_training_job` and :func:`~defect_pipeline.ml.stage.run_stage`
without Kedro. The checkpoint's ``model_meta`` (and so the package's ``model.json``) must say
``"input_mode": "tile"`` for a model trained on crops, with ``image_size`` the crop side and
``input_scale`` when crops came from rescaled images — the keys the sliding-window predictor
reads —, and the training summary says what ``auto`` resolved to and why. Before input modes
the meta had no ``input_mode`` key and every image was resized: these tests fail there.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from defect_pipeline.config import (
    AugmentationParams,
    DataParams,
    DiagnosisParams,
    ModelParams,
    RuntimeParams,
    StageParams,
    TrainerParams,
)
from defect_pipeline.ml.checkpoint import CheckpointStore
from defect_pipeline.ml.distributed import resolve_trainer
from defect_pipeline.ml.stage import build_training_job, plan_input, resolve_model_auto, run_stage
from tests.conftest import REPO_ROOT, prepared_demo

TINY_MODEL = {"backbone": "resnet18", "image_size": 64, "decoder_channels": 32}
pytestmark = pytest.mark.filterwarnings("ignore:.*random initialisation:UserWarning")


def _demo(root: Path, image_size: int, *, per_class: int = 3, good_images: int = 3
          ) -> tuple[str, pd.DataFrame, list[str]]:
    """The demo dataset (3 images per class + 3 good) through organize → check → masks → split."""
    _, _, manifest, scan_summary = prepared_demo(root, images_per_class=per_class, good_images=good_images,
                                                 image_size=image_size)
    return str(root), manifest, list(scan_summary["classes"])


@pytest.fixture(scope="module")
def demo_160(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, pd.DataFrame, list[str]]:
    """Demo images of 160 px: resizing them to 64 px shrinks them 2.5x, so ``auto`` crops."""
    return _demo(tmp_path_factory.mktemp("demo160") / "raw", 160)


def _run(tmp_path: Path, demo, **model) -> tuple[dict, dict, dict]:
    """One tiny stage; returns (summary, package meta, best/last checkpoint model_meta)."""
    root, manifest, classes = demo
    store = CheckpointStore(str(tmp_path / "stage1"))
    plan = build_training_job(
        manifest, raw_root=root, defect_classes=classes, checkpoints=store,
        model=ModelParams.model_validate({**TINY_MODEL, **model}),
        stage=StageParams(epochs=1, batch_size=4, max_batches_per_epoch=1, warmup_epochs=0.0),
        augmentation=AugmentationParams(), data=DataParams(raw_root=root), runtime=RuntimeParams(),
        trainer=TrainerParams(accelerator="cpu", precision="fp32"), stage_name="stage1")
    train_crop, val_crop = plan.job.train_set.crop, plan.job.val_set.crop
    if plan.job.meta["input_plan"]["mode"] == "crop":  # the datasets cut crops: random for training, fixed for val
        assert not train_crop.deterministic and val_crop.deterministic and train_crop.size == val_crop.size == 64
    else:
        assert train_crop is None and val_crop is None
    result = run_stage(plan, DiagnosisParams())
    folder = result.package.save(tmp_path / "package")
    package_meta = json.loads((folder / "model.json").read_text())
    kind = "best" if store.has_best() else "last"
    return result.summary, package_meta, store.load(kind)["model_meta"]


def test_auto_trains_on_crops_of_large_images_and_the_package_says_tile(tmp_path: Path, demo_160) -> None:
    summary, package_meta, checkpoint_meta = _run(tmp_path, demo_160)
    assert summary["input_mode"] == "crop"
    assert summary["input_plan"]["requested"] == "auto" and "2.5x" in summary["input_plan"]["reason"]
    assert summary["input_plan"]["crop"] == {"scale": 1.0, "defect_rate": 0.5}
    assert summary["model_input"] == {"input_mode": "tile", "image_size": 64}
    for meta in (package_meta, checkpoint_meta):
        assert meta["input_mode"] == "tile" and meta["image_size"] == 64 and "input_scale" not in meta


def test_crops_of_rescaled_images_record_the_scale(tmp_path: Path, demo_160) -> None:
    summary, package_meta, checkpoint_meta = _run(tmp_path, demo_160, input_mode="crop",
                                                  crop={"scale": 0.5, "defect_rate": 1.0})
    assert summary["input_mode"] == "crop" and "set explicitly" in summary["input_plan"]["reason"]
    for meta in (package_meta, checkpoint_meta):
        assert (meta["input_mode"], meta["image_size"], meta["input_scale"]) == ("tile", 64, 0.5)


def test_resize_asked_for_is_kept_and_recorded(tmp_path: Path, demo_160) -> None:
    summary, package_meta, checkpoint_meta = _run(tmp_path, demo_160, input_mode="resize")
    assert summary["input_mode"] == "resize" and summary["input_plan"]["crop"] is None
    for meta in (package_meta, checkpoint_meta):
        assert meta["input_mode"] == "resize" and "input_scale" not in meta


def test_the_default_demo_run_stays_on_resize(tmp_path: Path) -> None:
    """conf/base (the demo's image size and the model block) resolves to resize: `kedro run` is unchanged."""
    base = {name: yaml.safe_load((REPO_ROOT / "conf/base" / name).read_text())
            for name in ("parameters_training.yml", "parameters_data.yml")}
    model = ModelParams.model_validate(base["parameters_training.yml"]["model"])
    demo_size = base["parameters_data.yml"]["data"]["demo"]["image_size"]
    _, manifest, _ = _demo(tmp_path / "raw", demo_size)
    model, _ = resolve_model_auto(manifest, model, settings=resolve_trainer(**TrainerParams().model_dump()),
                                  good_label="good")  # conf/base: model.image_size auto
    plan = plan_input(manifest, model)
    assert model.input_mode == "auto"
    assert (plan.mode, plan.shrink) == ("resize", 1.0) and "does not shrink" in plan.reason


def test_the_augmentation_preview_shows_what_training_sees(demo_160) -> None:
    from defect_pipeline.ml.crops import CroppedTransform
    from defect_pipeline.ml.preview import render_preview
    from defect_pipeline.ml.stage import preview_transform

    _, manifest, _ = demo_160
    crop_view = preview_transform(manifest, ModelParams.model_validate(TINY_MODEL), AugmentationParams())
    resize_view = preview_transform(manifest, ModelParams.model_validate({**TINY_MODEL, "input_mode": "resize"}),
                                    AugmentationParams())
    assert isinstance(crop_view, CroppedTransform) and not isinstance(resize_view, CroppedTransform)
    image, mask = np.zeros((160, 160, 3), dtype=np.uint8), np.zeros((160, 160), dtype=np.uint8)
    assert crop_view(image=image, mask=mask)["image"].shape == (64, 64, 3)
    figure = render_preview([(image, mask)], crop_view, views=2, seed=0)
    assert len(figure.axes) == 3
