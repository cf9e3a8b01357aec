"""What changes while a stage trains, and its round trip through a checkpoint.

:class:`TrainState` holds what the training loop updates — the last finished epoch, the optimizer
step, the best monitored value and its epoch, the epochs without improvement, the per-epoch
history and per-step rows — and, after a run stopped mid-epoch, that epoch's
:class:`EpochProgress`. :meth:`TrainState.to_checkpoint` writes it together with the
:class:`Trainables`' state dicts and the RNG states as the self-describing dict of
``best.pt``/``last.pt``/``step_<N>.pt``; :meth:`TrainState.from_checkpoint` restores both from such a dict. The
key names are the checkpoint format: checkpoints written by earlier versions resume unchanged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from defect_pipeline.ml.checkpoint import capture_rng_state, restore_rng_state
from defect_pipeline.ml.engine.ema import WeightAverage


@dataclass
class Trainables:
    """The objects whose states a checkpoint holds beside the loop's counters."""

    model: nn.Module
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    ema: WeightAverage | None = None  # the weights' moving average, when the stage keeps one

    @property
    def evaluated(self) -> nn.Module:
        """The weights validation measures and ``best``/``last`` hold as ``model``: the EMA's, or the model's."""
        return self.model if self.ema is None else self.ema.module


def _zero_sums() -> dict[str, float]:
    # per-sample sums: each becomes its mean over the epoch's samples in the history row
    # (``train_accuracy`` sums correct image-class predictions, so its mean is the accuracy)
    return {"train_loss": 0.0, "train_cls_loss": 0.0, "train_seg_loss": 0.0, "train_accuracy": 0.0}


@dataclass
class EpochProgress:
    """How far one epoch got: its trained batches, running loss sums, optimizer-step rows, loss weights.

    Checkpointed (as ``partial_epoch``) when a checkpoint is written mid-epoch (a stop signal, a
    validation or ``step_<N>.pt`` every N steps); the resumed run draws the first ``batches_done``
    batches again without training on them, then restores ``rng`` (the RNG states saved with the
    checkpoint) and continues. The loss sums, sample counts and timings cover the *period* of the
    next history row: the epoch by default; with ``val_every_n_steps`` the batches since the last
    validation, which may have started in an earlier epoch (:meth:`continuing`).
    """

    epoch: int
    batches_done: int = 0  # trained batches of this epoch, those before an interruption included
    sums: dict[str, float] = field(default_factory=_zero_sums)  # per-sample losses times batch sizes
    seen: int = 0  # samples
    steps: list[dict[str, Any]] = field(default_factory=list)  # one row per optimizer step
    weights: dict[str, float] = field(default_factory=dict)  # the loss weights after the last batch
    seen_before: int = 0  # samples trained on before an interruption (left out of the throughput)
    rng: dict[str, Any] | None = None  # RNG states to restore after the replayed batches
    accumulated_loss: float = 0.0  # since the last optimizer step
    accumulated_batches: int = 0
    started: float = 0.0  # time.perf_counter() at the period's start (0: not started in this process)
    train_seconds: float = 0.0
    steps_logged: int = 0  # leading rows of ``steps`` already handed to the training logger
    closed: bool = False  # the epoch is over and in the state's history and steps

    def start_period(self) -> None:
        """A history row was written mid-epoch: the next row's sums, counts and clock start here."""
        self.sums, self.seen, self.seen_before = _zero_sums(), 0, 0
        self.started, self.train_seconds = time.perf_counter(), 0.0

    @classmethod
    def continuing(cls, previous: EpochProgress, epoch: int) -> EpochProgress:
        """Epoch ``epoch``, whose next history row also covers ``previous``'s batches since its last row."""
        return cls(epoch=epoch, sums=dict(previous.sums), seen=previous.seen, weights=dict(previous.weights),
                   seen_before=previous.seen_before, started=previous.started)

    def add_batch(self, size: int, total: float, cls: float, seg: float, weights: dict[str, float],
                  correct: float = 0.0) -> None:
        """Count a trained batch of ``size`` samples: its total loss ``total``, the task losses ``cls`` and
        ``seg``, the loss ``weights``, and ``correct``, how many of its images the classification head got
        right (the training accuracy)."""
        self.accumulated_loss += total
        self.accumulated_batches += 1
        self.batches_done += 1
        self.seen += size
        self.sums["train_loss"] += total * size
        self.sums["train_cls_loss"] += cls * size
        self.sums["train_seg_loss"] += seg * size
        self.sums["train_accuracy"] += correct
        self.weights = weights

    def end_step(self, step: int, dropout: float, param_groups: list[dict[str, Any]]) -> None:
        """Record optimizer step ``step`` (mean loss of its accumulated batches, dropout, LR per group)."""
        row: dict[str, Any] = {"step": step, "epoch": self.epoch, "dropout": dropout,
                               "train_loss": self.accumulated_loss / self.accumulated_batches}
        row.update({f"lr_{g['name']}": g["lr"] for g in param_groups})
        self.steps.append(row)
        self.accumulated_loss, self.accumulated_batches = 0.0, 0

    def to_checkpoint(self) -> dict[str, Any]:
        """The ``partial_epoch`` entry of a checkpoint."""
        return {"epoch": self.epoch, "batches_done": self.batches_done, "sums": self.sums, "seen": self.seen,
                "steps": self.steps, "weights": {k: float(v) for k, v in self.weights.items()}}

    @classmethod
    def from_checkpoint(cls, partial: dict[str, Any], rng: dict[str, Any]) -> EpochProgress:
        """The progress a ``partial_epoch`` entry describes; ``rng``: the checkpoint's RNG states."""
        # a checkpoint written before train_accuracy was logged has no such sum: it counts from here
        return cls(epoch=partial["epoch"], batches_done=partial["batches_done"],
                   sums={**_zero_sums(), **partial["sums"]},
                   seen=partial["seen"], steps=list(partial["steps"]), weights=dict(partial["weights"]),
                   seen_before=partial["seen"], rng=rng)


@dataclass
class TrainState:
    """Everything the training loop changes, from the first epoch to the last."""

    epoch: int = 0  # the last finished epoch
    global_step: int = 0  # optimizer steps taken
    best: float | None = None  # best value of the monitored metric
    best_epoch: int | None = None
    best_step: int | None = None  # the optimizer step of the best validation
    bad_epochs: int = 0  # validations (epochs by default) since the monitored metric last improved
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per validation (by default per epoch)
    steps: list[dict[str, Any]] = field(default_factory=list)  # one row per optimizer step of finished epochs
    partial: EpochProgress | None = None  # the epoch a stop signal interrupted, to be continued
    resumed_from: int | None = None  # the epoch the checkpoint this run resumed from had finished
    stop_reason: str | None = None  # "early_stopping" or "time_budget" when it stops before the last step
    carried: EpochProgress | None = None  # an epoch that ended between two validations: its period goes on
    budget: list[dict[str, Any]] = field(default_factory=list)  # epochs auto: the stage lengths estimated so far

    def start_epoch(self, epoch: int) -> EpochProgress:
        """The progress of epoch ``epoch`` from here: the interrupted one continued, one that carries on the
        previous epoch's unfinished period, or a fresh one."""
        partial, self.partial = self.partial, None
        carried, self.carried = self.carried, None
        if partial is not None and partial.epoch == epoch:
            return partial
        return EpochProgress(epoch) if carried is None else EpochProgress.continuing(carried, epoch)

    def close_epoch(self, progress: EpochProgress) -> None:
        """Epoch ``progress.epoch`` is over: it is the last finished one and its step rows join :attr:`steps`."""
        self.epoch = progress.epoch
        self.steps.extend(progress.steps)
        progress.closed = True

    def to_checkpoint(self, parts: Trainables, *, meta: dict[str, Any], total_steps: int, monitor: str,
                      finished: bool = False, partial_epoch: EpochProgress | None = None) -> dict[str, Any]:
        """A self-describing checkpoint: ``meta``, the trainables' states, the RNG states and this state.

        ``model`` holds the evaluated weights (:attr:`Trainables.evaluated`: with an EMA its average, which
        the next stage, the package and prediction read); with an EMA, ``raw_model`` holds the weights the
        optimizer steps (what a resume continues training). ``partial_epoch``: how far the epoch after
        :attr:`epoch` got (a run stopped mid-epoch).
        """
        checkpoint = {
            **meta, "model": parts.evaluated.state_dict(), "loss": parts.loss_fn.state_dict(),
            "optimizer": parts.optimizer.state_dict(), "scheduler": parts.scheduler.state_dict(),
            "scaler": parts.scaler.state_dict(), "rng": capture_rng_state(), "epoch": self.epoch,
            "global_step": self.global_step, "total_steps": total_steps, "monitor": monitor,
            "best_metric": self.best, "best_epoch": self.best_epoch, "best_step": self.best_step,
            "bad_epochs": self.bad_epochs,
            "history": self.history, "steps": self.steps, "finished": finished,
            "stopped_early": self.stop_reason is not None, "budget_estimates": self.budget,
        }
        if parts.ema is not None:
            checkpoint["raw_model"] = parts.model.state_dict()
        if partial_epoch is not None:
            checkpoint["partial_epoch"] = partial_epoch.to_checkpoint()
        return checkpoint

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any], parts: Trainables) -> TrainState:
        """Load ``checkpoint`` (a ``last.pt``) into ``parts`` and the RNGs; the state to continue from.

        After a run stopped mid-epoch the RNG states are restored later, once that epoch's trained
        batches were drawn again (:attr:`EpochProgress.rng`).
        """
        raw = checkpoint.get("raw_model")
        if (raw is None) != (parts.ema is None):
            raise ValueError(f"the checkpoint was written {'without' if raw is None else 'with'} an EMA of the "
                             f"weights, but this stage {'keeps' if parts.ema is not None else 'keeps none'}: set "
                             "ema.enabled as it was, or resume: false to start the stage over")
        parts.model.load_state_dict(checkpoint["model"] if raw is None else raw)
        if parts.ema is not None:
            parts.ema.module.load_state_dict(checkpoint["model"])
        parts.loss_fn.load_state_dict(checkpoint["loss"])
        parts.optimizer.load_state_dict(checkpoint["optimizer"])
        parts.scheduler.load_state_dict(checkpoint["scheduler"])
        parts.scaler.load_state_dict(checkpoint["scaler"])
        partial = checkpoint.get("partial_epoch")
        if partial is None:
            restore_rng_state(checkpoint["rng"])
        return cls(epoch=checkpoint["epoch"], global_step=checkpoint["global_step"],
                   best=checkpoint.get("best_metric"), best_epoch=checkpoint.get("best_epoch"),
                   best_step=checkpoint.get("best_step"), bad_epochs=checkpoint.get("bad_epochs", 0), history=list(checkpoint["history"]),
                   steps=list(checkpoint.get("steps", [])), resumed_from=checkpoint["epoch"],
                   budget=list(checkpoint.get("budget_estimates", [])),
                   partial=None if partial is None else EpochProgress.from_checkpoint(partial, checkpoint["rng"]))
