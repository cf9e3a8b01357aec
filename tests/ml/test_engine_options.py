"""The engine with each learning-rate scheduler.

The scheduler test failed on the code before ``stage.scheduler`` existed: ``EngineConfig`` had no
``scheduler`` (``cosine_restarts``, ``step`` and ``constant`` runs could not be configured).
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from defect_pipeline.ml.checkpoint import CheckpointStore
from defect_pipeline.ml.metrics import MultitaskMetrics
from defect_pipeline.ml.schedules import lr_multiplier
from tests.ml.test_engine import LABELS, META, TinyNet, loaders, make_loss


def _train(engine: ModuleType, store: Path, **overrides):
    torch.manual_seed(0)
    train_loader, val_loader = loaders()
    cfg = engine.EngineConfig(**{"epochs": 2, "lr": 1e-2, "backbone_lr": 5e-3, "weight_decay": 0.01, "seed": 3,
                                 "progress": False, **overrides})
    return engine.train(TinyNet(), make_loss("fixed"), train_loader, val_loader,
                        metrics=MultitaskMetrics(LABELS, "multiclass"), config=cfg, store=CheckpointStore(str(store)),
                        meta=META), cfg


@pytest.mark.parametrize(("scheduler", "settings"), [
    ("cosine", {}),
    ("cosine_restarts", {"restart_epochs": 0.5, "restart_mult": 2.0}),
    ("step", {"step_epochs": 0.5, "step_gamma": 0.5}),
    ("constant", {}),
])
def test_every_optimizer_step_uses_the_configured_schedule(tmp_path: Path, scheduler: str, settings: dict) -> None:
    engine = sys.modules["defect_pipeline.ml.engine"]
    result, cfg = _train(engine, tmp_path, warmup_epochs=0.5, scheduler=scheduler, **settings)
    # 24 samples / batch 4 = 6 steps per epoch: warmup 3 steps, cycles / decays every 3 steps
    shape = cfg.lr_schedule(6)
    assert shape["warmup_steps"] == 3 and shape["total_steps"] == 12
    assert shape["restart_steps"] == (3 if scheduler == "cosine_restarts" else None)
    assert shape["step_size"] == (3 if scheduler == "step" else None)
    lrs = [row["lr_head"] for row in result.steps]
    assert lrs == pytest.approx([1e-2 * lr_multiplier(row["step"] - 1, **shape) for row in result.steps])
    after_warmup = lrs[3:]
    expected = {"cosine": lambda: all(b < a for a, b in zip(after_warmup, after_warmup[1:])),
                "cosine_restarts": lambda: after_warmup[3] == pytest.approx(1e-2),  # restarted at step 6
                "step": lambda: after_warmup[3:6] == pytest.approx([5e-3] * 3),
                "constant": lambda: after_warmup == pytest.approx([1e-2] * 9)}
    assert expected[scheduler](), lrs

