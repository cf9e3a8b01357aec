"""What a caller hands the training engine and gets back: configuration, result, logger, errors.

:class:`EngineConfig` is everything the loop needs, resolved (no ``auto`` left);
:class:`TrainResult` is what a stage produced; a :class:`TrainingLogger` receives per-step rows,
per-epoch rows, checkpoint events and figures (the caller injects one: MLflow in the pipeline,
:class:`NullLogger` in tests); :class:`NonFiniteLossError` stops training on a NaN/inf loss.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from defect_pipeline.ml.engine.budget import PROVISIONAL_STEPS

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN/inf: training stops before the weights are touched."""


class TrainingLogger(Protocol):
    """Receives what training produces, on rank 0 only (MLflow, files, or nothing)."""

    def log_steps(self, rows: list[dict[str, Any]]) -> None:
        """Before each :meth:`log_epoch` (and at an epoch's end without one): the per-optimizer-step rows
        since the last call (``step``, ``epoch``, ``dropout``, ``lr_<group>``, ``train_loss``)."""

    def log_epoch(self, epoch: int, step: int, row: dict[str, float]) -> None:
        """A history row (once per epoch; with ``val_every_n_steps``, once per validation: ``epoch`` is the
        epoch it fell in, ``step`` the optimizer step): training and validation figures, LR per group,
        dropout, loss weights, timings."""

    def log_checkpoint(self, kind: str, path: Path) -> None:
        """Checkpoint ``kind`` (``best``, ``last`` or ``step``) was written to ``path``."""

    def log_figure(self, name: str, figure: Any) -> None:
        """A matplotlib figure to keep as ``name`` (e.g. ``val_preview_epoch5.png``); the engine itself
        draws none (:mod:`defect_pipeline.ml.val_preview` does)."""


class NullLogger:
    """A :class:`TrainingLogger` that only writes to the Python log."""

    def log_steps(self, rows: list[dict[str, Any]]) -> None:
        """Per-step rows stay out of the Python log (one line per epoch is enough there)."""

    def log_epoch(self, epoch: int, step: int, row: dict[str, float]) -> None:
        logger.info("epoch %d (step %d): %s", epoch, step,
                    ", ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float)))

    def log_checkpoint(self, kind: str, path: Path) -> None:
        logger.info("checkpoint %s -> %s", kind, path)

    def log_figure(self, name: str, figure: Any) -> None:
        """Figures are not kept."""


@dataclass(frozen=True)
class EngineConfig:
    """Everything the loop needs, resolved (no "auto" left)."""

    epochs: int | None  # None: the stage is as long as time_budget_s (ml/engine/budget.py)
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
    channels_last: bool = False  # model and input batches in channels_last memory format
    compile: bool = False  # torch.compile the model's forward (eager when it cannot)
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
    time_budget_s: float | None = None  # stop after the validation that reaches it; epochs None: the length
    max_steps: int | None = None  # the stage's length in optimizer steps, instead of epochs
    val_every_n_steps: int | None = None  # validate after every N-th step and the last (None: once per epoch)
    checkpoint_every_n_steps: int | None = None  # write step_<N>.pt after every N-th optimizer step
    keep_last_n: int | None = 3  # step_<N>.pt files kept, the oldest removed (None: all)
    ema_decay: float | None = None  # validate, checkpoint and package an EMA of the weights (None: the weights)
    ema_warmup_steps: int = 0  # the EMA's averaging window grows to its full length over these steps

    def __post_init__(self) -> None:
        if self.spans_budget and self.time_budget_s is None:
            raise ValueError("epochs: auto takes the stage's length from its time budget: set time_budget_s "
                             "(seconds), or give epochs or max_steps")

    @property
    def spans_budget(self) -> bool:
        """The stage is as long as ``time_budget_s``: no ``epochs`` (auto) and no ``max_steps``."""
        return self.epochs is None and self.max_steps is None

    def total_steps(self, steps_per_epoch: int) -> int:
        """The stage's length in optimizer steps: ``max_steps``, else ``epochs x steps_per_epoch`` (spanning the
        time budget: a provisional length until the engine estimated it)."""
        if self.max_steps is not None:
            return self.max_steps
        return PROVISIONAL_STEPS if self.epochs is None else steps_per_epoch * self.epochs

    def epochs_to_run(self, steps_per_epoch: int) -> int:
        """Epochs the stage runs: ``epochs``, or with ``max_steps`` as many as its steps reach (the last one
        ends at step ``max_steps``, possibly before its last batch)."""
        return math.ceil(self.total_steps(steps_per_epoch) / steps_per_epoch)

    def warmup_steps(self, steps_per_epoch: int) -> int:
        return round(self.warmup_epochs * steps_per_epoch)

    def lr_schedule(self, steps_per_epoch: int, total_steps: int | None = None) -> dict[str, Any]:
        """The keyword arguments of :func:`~defect_pipeline.ml.schedules.create_scheduler`: lengths in epochs
        turned into optimizer steps (``steps_per_epoch`` of them per epoch; a cycle or decay interval is at
        least one step); the schedule spans ``total_steps`` (default :meth:`total_steps`)."""
        def in_steps(epochs: float | None) -> int | None:
            return None if epochs is None else max(1, round(epochs * steps_per_epoch))

        total = self.total_steps(steps_per_epoch) if total_steps is None else total_steps
        warmup = self.warmup_steps(steps_per_epoch)
        if warmup > total:
            length = f"max_steps {self.max_steps}" if self.max_steps is not None else f"epochs {self.epochs}"
            raise ValueError(f"warmup_epochs {self.warmup_epochs} is {warmup} optimizer steps ({steps_per_epoch} per "
                             f"epoch), longer than the whole stage ({length}: {total} steps): lower warmup_epochs "
                             "or lengthen the stage")
        return {"total_steps": total, "warmup_steps": warmup,
                "warmup_lr_ratio": self.warmup_lr_ratio, "eta_min_ratio": self.eta_min_ratio,
                "scheduler": self.scheduler, "restart_steps": in_steps(self.restart_epochs),
                "restart_mult": self.restart_mult, "step_size": in_steps(self.step_epochs),
                "step_gamma": self.step_gamma}


@dataclass
class TrainResult:
    """What a stage produced: history rows and the best/last bookkeeping."""

    history: list[dict[str, Any]]
    best_metric: float | None
    best_epoch: int | None  # the epoch of the best history row
    epochs_run: int
    global_step: int
    total_steps: int
    stopped_early: bool
    already_finished: bool = False
    resumed_from_epoch: int | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)  # one row per optimizer step
    stop_reason: str | None = None  # "early_stopping" or "time_budget" when it stopped before the last step
    best_step: int | None = None  # the optimizer step of the best history row
    budget_estimates: list[dict[str, Any]] = field(default_factory=list)  # epochs auto: the lengths estimated
