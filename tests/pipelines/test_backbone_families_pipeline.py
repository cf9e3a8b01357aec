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


def test_stage1_with_lora_trains_adapters_and_heads_resumes_and_packages_merged_weights(kedro_project: Path) -> None:
    """``stage1.adapter.type=lora, rank=4`` with an unfrozen backbone: the trainable count is adapters + heads,
    the optimizer holds only those, a rerun starts from last.pt, and the package holds merged weights (no
    adapter keys) that predict as the unmerged checkpoint does. Before issue 17 ``stage1.adapter`` was refused."""
    import torch

    from defect_pipeline.ml.inspection import describe
    from defect_pipeline.ml.models.adapters import LoraSpec, add_lora

    run_kedro(kedro_project, "data", params=TINY)
    stage = {**TINY_STAGE, "epochs": 1, "freeze_backbone": False,
             "adapter": {"type": "lora", "rank": 4, "alpha": 8.0}}
    params = {**TINY, "model": {"backbone": "vit_small_patch16_dinov3", "image_size": 32, "decoder_channels": 32},
              "stage1": stage}
    run_kedro(kedro_project, "stage1", params=params)

    summary = json.loads((kedro_project / "data/08_reporting/stage1/training_summary.json").read_text())
    counts = summary["parameters"]
    assert counts["adapters"] == 12 * 4 * ((384 + 1152) + (384 + 384) + (384 + 1536) + (1536 + 384))
    assert counts["trainable"] == counts["adapters"] + counts["head"]
    last = safe_torch_load(kedro_project / "data/06_models/stage1/last.pt")
    assert last["model_meta"]["adapter"] == {"type": "lora", "rank": 4, "alpha": 8.0, "dropout": 0.0,
                                             "target_modules": ["qkv", "proj", "fc1", "fc2"]}
    held = sum(len(group["params"]) for group in last["optimizer"]["param_groups"])
    lora_tensors = sum("lora_" in key for key in last["model"])
    head_tensors = sum(not key.startswith("encoder.") for key in last["model"])
    loss_tensors = sum(key.startswith("log_var") for key in last.get("loss") or {})  # uncertainty weighting only
    assert held == lora_tensors + head_tensors + loss_tensors

    details = describe(kedro_project / "data/06_models/stage1/last.pt")
    assert details["parameters"]["lora adapters (in encoder)"]["trainable"] == counts["adapters"]
    assert details["parameters"]["all"]["trainable"] == counts["trainable"]

    package = ModelPackage.load(kedro_project / "data/06_models/stage1/model")
    assert package.meta["adapter"]["merged"] is True
    assert not any("lora" in key or "base_layer" in key for key in package.state_dict)
    merged = package.build_model()
    unmerged = package.new_network()
    add_lora(unmerged, LoraSpec(rank=4, alpha=8.0))
    best = safe_torch_load(kedro_project / "data/06_models/stage1/best.pt")
    unmerged.load_state_dict(best["model"])
    unmerged.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(merged(x).seg_logits, unmerged(x).seg_logits, atol=1e-4)
        assert torch.allclose(merged(x).cls_logits, unmerged(x).cls_logits, atol=1e-4)

    # a rerun starts from last.pt (its adapter keys load into the adapted network: the unmerged model above
    # loaded best.pt the same way, strictly); the stage is finished, so it says so and trains no more
    run_kedro(kedro_project, "stage1", params=params)
    summary = json.loads((kedro_project / "data/08_reporting/stage1/training_summary.json").read_text())
    assert summary["init_from"] == "resume" and summary["already_finished"] is True
