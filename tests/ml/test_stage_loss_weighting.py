"""Dynamic loss weighting in stage 1, as ``kedro run --params stage1.loss.weighting=dynamic`` asks for it.

Stage 1 used fixed weights only because ``conf/base/parameters_training.yml`` sets
``stage1.loss: {weighting: fixed, ...}``; nothing in the code forbids ``dynamic`` there. This test
builds stage 1 (frozen backbone, from scratch) from the shipped block with the override merged
in, trains it for a few steps on the demo data and checks that the recipe's ramps were applied:
``alpha`` rising from 0.5 towards 1.0 and ``beta`` falling from 1.0 towards 0.3 over the stage's
steps. Before the recipe defaults it failed: the ramps ran the other way (alpha 1.0 -> 0.5).
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
    TrainerParams,
    validate_parameters,
)
from defect_pipeline.ml.checkpoint import CheckpointStore
from defect_pipeline.ml.schedules import dynamic_weight
from defect_pipeline.ml.stage import build_training_job, run_stage
from tests.conftest import REPO_ROOT
from tests.ml.test_stage_input_mode import TINY_MODEL, _demo

pytestmark = pytest.mark.filterwarnings("ignore:.*random initialisation:UserWarning")


@pytest.fixture(scope="module")
def demo_64(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, pd.DataFrame, list[str]]:
    return _demo(tmp_path_factory.mktemp("demo64") / "raw", 64)


def test_stage1_trains_with_the_recipes_dynamic_weights(tmp_path: Path, demo_64) -> None:
    root, manifest, classes = demo_64
    shipped = yaml.safe_load((REPO_ROOT / "conf/base/parameters_training.yml").read_text())["stage1"]
    block = {**shipped, "loss": {**shipped["loss"], "weighting": "dynamic"},  # the --params override
             "epochs": 2, "batch_size": 2, "max_batches_per_epoch": 2, "warmup_epochs": 0.0}
    stage = validate_parameters({"stage1": block})["stage1"]
    assert stage.freeze_backbone and stage.init_from == "scratch"
    plan = build_training_job(
        manifest, raw_root=root, defect_classes=classes, checkpoints=CheckpointStore(str(tmp_path / "stage1")),
        model=ModelParams.model_validate(TINY_MODEL), stage=stage, augmentation=AugmentationParams(),
        data=DataParams(raw_root=root), runtime=RuntimeParams(),
        trainer=TrainerParams(accelerator="cpu", precision="fp32"), stage_name="stage1")
    assert plan.job.loss_fn.weighting == "dynamic"
    result = run_stage(plan, DiagnosisParams())
    history = result.history
    assert list(history["global_step"]) == [2, 4] and result.summary["total_steps"] == 4
    # each row holds the weights of its epoch's last batch: steps 1 and 3 (0-based) of 4
    assert list(history["loss_weight_alpha"]) == pytest.approx(
        [dynamic_weight(s, total_steps=4, start=0.5, end=1.0) for s in (1, 3)])
    assert list(history["loss_weight_beta"]) == pytest.approx(
        [dynamic_weight(s, total_steps=4, start=1.0, end=0.3) for s in (1, 3)])
    assert history["loss_weight_alpha"].is_monotonic_increasing and history["loss_weight_beta"].is_monotonic_decreasing
