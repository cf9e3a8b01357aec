"""What a caller hands the training engine and gets back: configuration, result, logger, errors.

:class:`EngineConfig` is everything the loop needs, resolved (no ``auto`` left);
:class:`TrainResult` is what a stage produced; a :class:`TrainingLogger` receives per-step rows,
per-epoch rows and checkpoint events (the caller injects one: MLflow in the pipeline,
:class:`NullLogger` in tests); :class:`NonFiniteLossError` stops training on a NaN/inf loss.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN/inf: training stops before the weights are touched."""


class TrainingLogger(Protocol):
    """Receives what training produces, on rank 0 only (MLflow, files, or nothing)."""

    def log_steps(self, rows: list[dict[str, Any]]) -> None:
        """Once per epoch, before :meth:`log_epoch`: that epoch's per-optimizer-step rows
        (``step``, ``epoch``, ``dropout``, ``lr_<group>``, ``train_loss``)."""

    def log_epoch(self, epoch: int, step: int, row: dict[str, float]) -> None:
        """The epoch's row: training and validation figures, LR per group, dropout, loss weights, timings."""

    def log_checkpoint(self, kind: str, path: Path) -> None:
        """Checkpoint ``kind`` (``best`` or ``last``) was written to ``path``."""


class NullLogger:
    """A :class:`TrainingLogger` that only writes to the Python log."""

    def log_steps(self, rows: list[dict[str, Any]]) -> None:
        """Per-step rows stay out of the Python log (one line per epoch is enough there)."""

    def log_epoch(self, epoch: int, step: int, row: dict[str, float]) -> None:
        logger.info("epoch %d (step %d): %s", epoch, step,
                    ", ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float)))

    def log_checkpoint(self, kind: str, path: Path) -> None:
        logger.info("checkpoint %s -> %s", kind, path)


@dataclass(frozen=True)
class EngineConfig:
    """Everything the loop needs, resolved (no "auto" left)."""

    epochs: int
    lr: float
    backbone_lr: float
    weight_decay: float
    warmup_epochs: float = 0.0
    warmup_lr_ratio: float = 0.1
    eta_min_ratio: float = 0.01
    scheduler: str = "cosine"  # the LR shape after the warmup: cosine | cosine_restarts | step | constant
    restart_epochs: float | None = None  # cosine_restarts: the first cycle's length
    restart_mult: float = 1.0  # cosine_restarts: each cycle this many times the last
    step_epochs: float | None = None  # step: epochs between two decays
    step_gamma: float = 0.1  # step: the factor applied at each decay
    grad_clip: float | None = 1.0
    accumulate_grad_batches: int = 1
    precision: str = "fp32"
    device: str = "cpu"
    monitor: str = "combined_score"
    mode: str = "max"
    patience: int = 5
    min_delta: float = 0.0
    dropout_rate: float = 0.0
    dropout_warmup_step: int = 0
    freeze_backbone: bool = False
    seed: int = 42
    max_batches_per_epoch: int | None = None
    resume: bool = True
    progress: bool = True
    time_budget_s: float | None = None  # stop after the epoch that reaches it (equal-budget comparisons)

    def lr_schedule(self, steps_per_epoch: int) -> dict[str, Any]:
        """The keyword arguments of :func:`~defect_pipeline.ml.schedules.create_scheduler`: lengths in epochs
        turned into optimizer steps (``steps_per_epoch`` of them per epoch; a cycle or decay interval is at
        least one step)."""
        def in_steps(epochs: float | None) -> int | None:
            return None if epochs is None else max(1, round(epochs * steps_per_epoch))

        return {"total_steps": steps_per_epoch * self.epochs,
                "warmup_steps": round(self.warmup_epochs * steps_per_epoch),
                "warmup_lr_ratio": self.warmup_lr_ratio, "eta_min_ratio": self.eta_min_ratio,
                "scheduler": self.scheduler, "restart_steps": in_steps(self.restart_epochs),
                "restart_mult": self.restart_mult, "step_size": in_steps(self.step_epochs),
                "step_gamma": self.step_gamma}


@dataclass
class TrainResult:
    """What a stage produced: history rows and the best/last bookkeeping."""

    history: list[dict[str, Any]]
    best_metric: float | None
    best_epoch: int | None
    epochs_run: int
    global_step: int
    total_steps: int
    stopped_early: bool
    already_finished: bool = False
    resumed_from_epoch: int | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)  # one row per optimizer step
    stop_reason: str | None = None  # "early_stopping" or "time_budget" when it stopped before the last epoch
