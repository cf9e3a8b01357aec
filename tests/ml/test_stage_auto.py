"""A stage resolves its ``auto`` settings once, before anything is built, and records what they became.

Tiny stages (resnet18, one batch) on the synthetic demo data, through
:func:`~defect_pipeline.ml.stage.build_training_job` and :func:`~defect_pipeline.ml.stage.run_stage`
without Kedro. Before ``auto`` settings existed, ``image_size: auto`` and ``batch_size: auto`` were
refused by the parameter schema and no stage had a sampler or an ``auto`` summary: these tests fail there.
"""

from __future__ import annotations

from pathlib import Path

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
from defect_pipeline.ml.stage import build_training_job, plan_input, resolve_auto, resolve_model_auto, run_stage
from tests.conftest import REPO_ROOT
from tests.ml.test_stage_input_mode import _demo

pytestmark = pytest.mark.filterwarnings("ignore:.*random initialisation:UserWarning")
CPU = TrainerParams(accelerator="cpu", precision="fp32")
SETTINGS = resolve_trainer(**CPU.model_dump())


@pytest.fixture(scope="module")
def skewed(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, pd.DataFrame, list[str]]:
    """Demo images of 64 px with 8x as many defect-free images as images of each defect class."""
    return _demo(tmp_path_factory.mktemp("skewed") / "raw", 64, good_images=24)


def _build(tmp_path: Path, demo, model: dict, stage: dict):
    root, manifest, classes = demo
    return build_training_job(
        manifest, raw_root=root, defect_classes=classes, checkpoints=CheckpointStore(str(tmp_path / "stage2")),
        model=ModelParams.model_validate({"backbone": "resnet18", "decoder_channels": 32, **model}),
        stage=StageParams.model_validate({"max_batches_per_epoch": 1, "warmup_epochs": 0.0, **stage}),
        augmentation=AugmentationParams(), data=DataParams(raw_root=root), runtime=RuntimeParams(), trainer=CPU,
        stage_name="stage2")


def test_auto_settings_reach_the_job_and_the_summary(tmp_path: Path, skewed) -> None:
    plan = _build(tmp_path, skewed, {"image_size": "auto"},
                  {"batch_size": "auto", "epochs": 1, "sampler": "auto", "loss": {"class_weights": "auto"}})
    job = plan.job
    assert plan.model.image_size == 64 and job.meta["model_meta"]["image_size"] == 64  # the demo's 64 px images
    assert job.batch_size == plan.stage.batch_size == 2  # 30 training images: 30 / 8 steps -> 2
    assert plan.stage.sampler == "uniform" and job.sample_weights is None  # every image once per epoch
    assert plan.stage.loss.class_weights == "sqrt"
    weights = job.loss_fn.cls_loss.class_weights.tolist()
    good = job.train_set.labels.image_classes.index("good")
    assert weights[good] < min(w for i, w in enumerate(weights) if i != good)  # the common class weighs less
    summary = run_stage(plan, DiagnosisParams()).summary
    resolved = summary["auto"]["resolved"]
    assert resolved["model.image_size"] == {**resolved["model.image_size"], "value": 64, "auto": True}
    assert resolved["stage2.loss.class_weights"]["value"] == "sqrt"
    assert "(more than 3x)" in resolved["stage2.loss.class_weights"]["reason"]
    assert resolved["stage2.epochs"] == {**resolved["stage2.epochs"], "value": 1, "auto": False}
    assert summary["auto"]["fingerprint"]["class_counts"]["good"] == 16
    assert summary["trainer"]["global_batch_size"] == 2


def test_explicit_values_win_and_the_uniform_sampler_turns_class_weights_on(tmp_path: Path, skewed) -> None:
    plan = _build(tmp_path, skewed, {"image_size": 96},
                  {"batch_size": 3, "epochs": 2, "sampler": "uniform", "loss": {"class_weights": "auto"}})
    assert (plan.model.image_size, plan.job.batch_size, plan.job.config.epochs) == (96, 3, 2)
    assert plan.job.sample_weights is None
    weights = plan.job.loss_fn.cls_loss.class_weights.tolist()
    assert plan.stage.loss.class_weights == "sqrt" and max(weights) > 1.5 * min(weights)
    assert not any(item["auto"] for key, item in plan.job.meta["auto"]["resolved"].items()
                   if key != "stage2.loss.class_weights")


def test_imbalance_handling_forced_off_keeps_the_shuffle_and_an_unweighted_loss(tmp_path: Path, skewed) -> None:
    plan = _build(tmp_path, skewed, {"image_size": 64},
                  {"batch_size": 4, "epochs": 1, "sampler": "uniform", "loss": {"class_weights": "none"}})
    assert plan.job.sample_weights is None and plan.job.loss_fn.cls_loss.class_weights is None


def test_the_demo_recipe_resolves_to_small_sizes(tmp_path: Path) -> None:
    """conf/base's auto settings on the demo data (64 px, balanced classes): 64 px, batch 16, no imbalance
    handling; the demo keeps its explicit, short epochs (`kedro run` finishes in minutes)."""
    base = {name: yaml.safe_load((REPO_ROOT / "conf/base" / name).read_text())
            for name in ("parameters_training.yml", "parameters_data.yml")}
    training, demo = base["parameters_training.yml"], base["parameters_data.yml"]["data"]["demo"]
    model = ModelParams.model_validate(training["model"])
    assert model.image_size == "auto"
    _, manifest, _ = _demo(tmp_path / "raw", demo["image_size"], per_class=demo["images_per_class"],
                           good_images=demo["good_images"])
    for stage_name in ("stage1", "stage2", "stage3"):
        stage = StageParams.model_validate(training[stage_name])
        resolved_model, resolved, plan = resolve_auto(manifest, model, stage, settings=SETTINGS, good_label="good",
                                                      stage_name=stage_name)
        assert resolved_model.image_size == demo["image_size"] == 64
        assert (resolved.batch_size, resolved.sampler, resolved.loss.class_weights) == (16, "uniform", "none")
        assert resolved.epochs == stage.epochs <= 25 and not plan.settings["epochs"].auto
    assert plan_input(manifest, resolve_model_auto(manifest, model, settings=SETTINGS, good_label="good")[0]
                      ).mode == "resize"
