"""Backbone families through a real KedroSession on the tiny demo dataset.

The issue-17 acceptance line, ``kedro run --pipeline=stage1 --params "model.backbone=vit_small_patch16_dinov3,
model.image_size=64,stage1.epochs=1"``, on the demo (the tiny one of ``TINY``, two batches per epoch): before
DINOv3 was a family, ``decoder: auto`` gave it smp's DPT (stride 32), and this test's stride/decoder checks
failed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from defect_pipeline.ml.checkpoint import safe_torch_load
from defect_pipeline.ml.package import ModelPackage
from tests.conftest import TINY, TINY_STAGE, run_kedro

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:.*random initialisation:UserWarning")]


def test_stage1_trains_dinov3_small_on_the_demo(kedro_project: Path) -> None:
    run_kedro(kedro_project, "data", params=TINY)
    params = {**TINY, "model": {"backbone": "vit_small_patch16_dinov3", "image_size": 64},
              "stage1": {**TINY_STAGE, "epochs": 1}}
    run_kedro(kedro_project, "stage1", params=params)

    history = pd.read_csv(kedro_project / "data/08_reporting/stage1/history.csv")
    assert len(history) == 1 and history["train_loss"].notna().all() and history["val_loss"].notna().all()
    summary = json.loads((kedro_project / "data/08_reporting/stage1/training_summary.json").read_text())
    assert summary["init_from"] == "scratch"
    last = safe_torch_load(kedro_project / "data/06_models/stage1/last.pt")
    assert last["epoch"] == 1 and last["config"]["model"]["backbone"] == "vit_small_patch16_dinov3"
    package = ModelPackage.load(kedro_project / "data/06_models/stage1/model")
    model = package.build_model()
    assert (model.backbone_name, model.decoder_name, model.stride) == ("vit_small_patch16_dinov3", "sfp", 16)
