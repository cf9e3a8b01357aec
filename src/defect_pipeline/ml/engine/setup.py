"""What stays fixed while a stage trains (:class:`TrainingSetup`), and a stage as long as its time budget.

:class:`TrainingSetup` is what one :func:`~defect_pipeline.ml.engine.loop.train` call works with: what
is trained, on which data, where results go, and the stage's length — fixed, except for a stage with
``epochs: auto`` and ``time_budget_s``, whose length :func:`follow_budget` sets from the estimates of a
:class:`~defect_pipeline.ml.engine.budget.BudgetSchedule` (:func:`start_budget`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from defect_pipeline.ml.checkpoint import CheckpointStore
from defect_pipeline.ml.distributed import Processes
from defect_pipeline.ml.engine.budget import BudgetSchedule
from defect_pipeline.ml.engine.interface import EngineConfig, TrainingLogger
from defect_pipeline.ml.engine.start import resize_schedule
from defect_pipeline.ml.engine.state import Trainables, TrainState
from defect_pipeline.ml.metrics import MultitaskMetrics

logger = logging.getLogger(__name__)


@dataclass
class TrainingSetup:
    """What stays fixed during one :func:`~defect_pipeline.ml.engine.loop.train` call: what is trained, on which
    data, where results go (and the stage's length, which only a time budget sets on the way)."""

    parts: Trainables
    trained: nn.Module  # parts.model as the forward pass sees it (several processes: its DDP wrapper)
    train_loader: Any
    val_loader: Any
    metrics: MultitaskMetrics
    config: EngineConfig
    store: CheckpointStore
    meta: dict[str, Any]
    log: TrainingLogger
    processes: Processes
    batches: int  # per epoch
    total_steps: int  # the stage's length in optimizer steps (max_steps, epochs x steps per epoch, or estimated)
    epochs: int  # epochs the stage runs (with max_steps or a time budget: as many as its steps reach)
    monitor: str  # the history column early stopping and ``best`` follow
    clock: Callable[[], float] = time.perf_counter  # seconds (the time budget's clock)
    budget: BudgetSchedule | None = None  # epochs auto: times the steps to fit the stage in time_budget_s
    run_started: float = 0.0

    def __post_init__(self) -> None:
        self.run_started = self.clock()

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(self.batches / self.config.accumulate_grad_batches))

    def set_length(self, total_steps: int, *, step: int) -> None:
        """The stage ends at step ``total_steps``: the LR (from step ``step`` on) and loss-weight schedules span it."""
        self.total_steps, self.epochs = total_steps, math.ceil(total_steps / self.steps_per_epoch)
        resize_schedule(self.parts, self.config.lr_schedule(self.steps_per_epoch, total_steps), step)


def start_budget(setup: TrainingSetup, state: TrainState) -> BudgetSchedule:
    """The step timer of a stage as long as its time budget; a resumed stage keeps the length it had."""
    config, per_epoch = setup.config, setup.steps_per_epoch
    if state.budget:
        setup.set_length(state.budget[-1]["total_steps"], step=state.global_step)
    return BudgetSchedule(config.time_budget_s, steps_per_validation=config.val_every_n_steps or per_epoch,
                          validation_batches=len(setup.val_loader),
                          accumulate_grad_batches=config.accumulate_grad_batches,
                          min_steps=max(config.warmup_steps(per_epoch), 1), clock=setup.clock,
                          started=setup.run_started, frozen=bool(state.budget))


def follow_budget(setup: TrainingSetup, state: TrainState) -> None:
    """An estimate of the stage's length is due: rank 0's, on every rank, sizes the stage and its schedules."""
    estimate = setup.processes.broadcast(setup.budget.propose(state.global_step))
    if estimate is None:
        return
    setup.budget.accept(estimate)
    state.budget.append(estimate)
    setup.set_length(estimate["total_steps"], step=state.global_step)
    logger.info("%s: time budget %.0f s, %.0f s used at step %d; %.3g s per step, %.3g s per validation (%s): the "
                "stage ends at step %d (%d epochs)", setup.meta.get("stage"), estimate["budget_s"],
                estimate["elapsed_s"], state.global_step, estimate["step_seconds"], estimate["validation_seconds"],
                "measured" if estimate["validation_measured"] else "guessed", setup.total_steps, setup.epochs)
