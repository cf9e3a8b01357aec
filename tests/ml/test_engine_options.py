"""The engine with each learning-rate scheduler, and on a platform without the POSIX ``resource`` module.

``test_engine_imports_and_trains_without_resource`` failed on the code before this change: the
loop imported ``resource`` at import time, so ``import defect_pipeline.ml.engine`` raised
``ImportError`` once ``resource`` was unavailable (as on Windows). The scheduler test failed there
too: ``EngineConfig`` had no ``scheduler``.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import torch

import defect_pipeline.ml
from defect_pipeline.ml.checkpoint import CheckpointStore
from defect_pipeline.ml.engine import train
from defect_pipeline.ml.memory import peak_rss_mb
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


def _without(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Make ``import <name>`` fail for each name, as on a platform that lacks the module."""
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)


def _fresh_engine(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """``defect_pipeline.ml.engine`` imported again (the cached modules are put back after the test)."""
    monkeypatch.setattr(defect_pipeline.ml, "engine", sys.modules["defect_pipeline.ml.engine"])
    for name in [n for n in sys.modules if n.startswith("defect_pipeline.ml.engine")]:
        monkeypatch.delitem(sys.modules, name)
    return importlib.import_module("defect_pipeline.ml.engine")


def test_engine_imports_and_trains_without_resource(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _without(monkeypatch, "resource", "psutil")
    engine = _fresh_engine(monkeypatch)
    assert engine.train is not train  # the module was imported again, without resource
    result, _ = _train(engine, tmp_path)
    assert len(result.history) == 2 and (tmp_path / "last.pt").is_file()
    for row in result.history:
        assert "peak_rss_mb" not in row  # omitted, not a made-up figure
        assert row["train_loss"] > 0 and row["epoch_seconds"] > 0


def test_without_resource_the_peak_comes_from_psutil_when_installed(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    fake_psutil = SimpleNamespace(Process=lambda: SimpleNamespace(
        memory_info=lambda: SimpleNamespace(rss=100 * 2**20, peak_wset=300 * 2**20)))
    _without(monkeypatch, "resource")
    monkeypatch.setitem(sys.modules, "psutil", fake_psutil)
    result, _ = _train(_fresh_engine(monkeypatch), tmp_path, epochs=1)
    assert result.history[0]["peak_rss_mb"] == pytest.approx(300.0)


def test_peak_rss_by_platform(monkeypatch: pytest.MonkeyPatch) -> None:
    if importlib.util.find_spec("resource") is not None:  # POSIX: this process has a peak of some MiB
        assert 10 < peak_rss_mb() < 1e6
    _without(monkeypatch, "resource")
    # psutil on Linux/macOS reports no peak_wset: only the current RSS, which is not a peak
    monkeypatch.setitem(sys.modules, "psutil", SimpleNamespace(
        Process=lambda: SimpleNamespace(memory_info=lambda: SimpleNamespace(rss=100 * 2**20))))
    assert peak_rss_mb() is None
    _without(monkeypatch, "psutil")
    assert peak_rss_mb() is None

