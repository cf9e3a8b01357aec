"""LoRA adapters trained on two CPU processes (``trainer.devices: 2``: gloo, DDP through Lightning Fabric).

The stage is assembled as ``kedro run --pipeline=stage1`` assembles it (:func:`build_training_job`: a ViT
with ``stage1.adapter: {type: lora, rank: 4}`` and an unfrozen backbone) and launched on two processes
as the stage launches it. Rank 0 dies after the first ``last.pt`` (a crash mid-stage); the rerun
resumes from it on two processes and each rank then reports a fingerprint of its own weights (the
code logs none: :func:`_train_and_fingerprint` wraps the real per-rank function). What a user relies
on: the backbone's own weights stay bit-identical while adapters and heads train, both ranks hold
the same weights and ``last.pt`` is them, and the package holds merged weights, loads and predicts.
Nothing in this path needed fixing when the test was written (it passed on that code): it guards the
combination, which no test trained before. Slow on a shared CPU (two launches of two processes).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from defect_pipeline.config import (
    AugmentationParams,
    DataParams,
    ModelParams,
    RuntimeParams,
    TrainerParams,
    validate_parameters,
)
from defect_pipeline.ml.checkpoint import CheckpointStore
from defect_pipeline.ml.distributed import Processes, launch
from defect_pipeline.ml.engine import TrainingJob, run_training_job
from defect_pipeline.ml.models.adapters import LoraSpec, add_lora, is_adapter_parameter
from defect_pipeline.ml.package import ModelPackage
from defect_pipeline.ml.predict import Predictor
from defect_pipeline.ml.stage import build_training_job
from tests.conftest import prepared_demo

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:.*random initialisation:UserWarning")]

# the ViT of tests/ml/test_adapters.py; 64 px, not 32: at 32 the decoder's 1/32 level is 1 x 1, which its GroupNorm
# refuses for a batch of one image (as prediction runs)
VIT = {"backbone": "vit_small_patch16_dinov3", "image_size": 64, "decoder_channels": 32}
STAGE = {"epochs": 1, "batch_size": 4, "max_batches_per_epoch": 2, "warmup_epochs": 0.0, "freeze_backbone": False,
         "adapter": {"type": "lora", "rank": 4, "alpha": 8.0}}


def _fingerprint(state: dict[str, torch.Tensor]) -> dict[str, str]:
    return {key: hashlib.sha256(value.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
            for key, value in state.items()}


def _train_and_fingerprint(processes: Processes, job: TrainingJob, folder: str):
    """What every rank runs in a stage (:func:`run_training_job`), then this rank's weights' fingerprint."""
    result = run_training_job(processes, job)
    (Path(folder) / f"rank{processes.rank}.json").write_text(json.dumps(_fingerprint(job.model.state_dict())))
    return result


def _plan(root: str, manifest, classes: list[str], store: CheckpointStore, epochs: int):
    stage = validate_parameters({"stage1": {**STAGE, "epochs": epochs}})["stage1"]
    return build_training_job(
        manifest, raw_root=root, defect_classes=classes, checkpoints=store, model=ModelParams.model_validate(VIT),
        stage=stage, augmentation=AugmentationParams(), data=DataParams(raw_root=root), runtime=RuntimeParams(),
        trainer=TrainerParams(accelerator="cpu", devices=2, precision="fp32"), stage_name="stage1")


class _CrashAfterFirstLast:
    """A training logger (rank 0's) whose process dies right after ``last.pt`` was first written: a crash mid-stage."""

    def log_steps(self, rows) -> None:
        pass

    def log_epoch(self, epoch, step, row) -> None:
        pass

    def log_figure(self, name, figure) -> None:
        pass

    def log_checkpoint(self, kind: str, path: Path) -> None:
        if kind == "last":
            raise RuntimeError("simulated crash after last.pt")


def test_lora_adapters_train_on_two_processes_resume_and_package_merged(tmp_path: Path) -> None:
    _, raw_source, manifest, scan = prepared_demo(tmp_path / "raw", images_per_class=4, good_images=4,
                                                  image_size=64)
    root, classes = raw_source["raw_root"], list(scan["classes"])
    store = CheckpointStore(str(tmp_path / "stage1"))

    # two processes train epoch 1 of 2, then rank 0 dies after writing last.pt
    plan = _plan(root, manifest, classes, store, epochs=2)
    assert plan.settings.world_size == 2 and plan.settings.strategy == "ddp"
    start = {k: v.clone() for k, v in plan.job.model.state_dict().items()}  # the workers train copies of it
    plan.job.training_logger = _CrashAfterFirstLast()
    with pytest.raises(Exception, match="simulated crash after last.pt"):
        launch(plan.settings, run_training_job, plan.job)
    last = store.load("last")
    assert last["epoch"] == 1 and not last["finished"]

    # the backbone's own weights are bit-identical to the start; the adapters and the heads moved
    base = [k for k in start if k.startswith("encoder.") and not is_adapter_parameter(k)]
    adapters = [k for k in start if is_adapter_parameter(k)]
    heads = [k for k in start if not k.startswith("encoder.")]
    assert any("base_layer" in k for k in base) and adapters and heads
    assert [k for k in base if not torch.equal(last["model"][k], start[k])] == []
    assert any(not torch.equal(last["model"][k], start[k]) for k in adapters if "lora_B" in k)
    assert any(not torch.equal(last["model"][k], start[k]) for k in heads)

    # the rerun resumes from last.pt (its adapter keys) on two processes and finishes the stage
    plan = _plan(root, manifest, classes, store, epochs=2)
    assert plan.init_description == "resume"
    ranks = tmp_path / "ranks"
    ranks.mkdir()
    result = launch(plan.settings, _train_and_fingerprint, plan.job, str(ranks))
    assert result.resumed_from_epoch == 1 and result.epochs_run == 2
    assert [row["epoch"] for row in result.history] == [1, 2]

    # both ranks ended with the same weights, and last.pt holds them; the base weights are still the start's
    rank0, rank1 = (json.loads((ranks / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0 == rank1
    last = store.load("last")
    assert last["finished"] and _fingerprint(last["model"]) == rank0
    assert [k for k in base if not torch.equal(last["model"][k], start[k])] == []

    # the package (built as the stage builds it) holds merged weights, loads and predicts like the adapted net
    best = store.load("best")
    folder = ModelPackage.from_checkpoint(best, source=str(store.best_path)).save(tmp_path / "package")
    package = ModelPackage.load(folder)
    assert package.meta["adapter"]["merged"] is True
    assert not any("lora" in key or "base_layer" in key for key in package.state_dict)
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    (prediction,) = Predictor(package).predict([image])
    assert prediction.mask.shape == (64, 64)
    unmerged = package.new_network()  # the adapted network as it trained, from best.pt's adapter keys
    add_lora(unmerged, LoraSpec.from_dict(best["model_meta"]["adapter"]))
    unmerged.load_state_dict(best["model"])
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        merged_out, unmerged_out = package.build_model()(x), unmerged.eval()(x)
    assert torch.allclose(merged_out.seg_logits, unmerged_out.seg_logits, atol=1e-4)
    assert torch.allclose(merged_out.cls_logits, unmerged_out.cls_logits, atol=1e-4)
