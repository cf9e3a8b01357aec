"""The training loop: :func:`train` for one stage, read top to bottom in labelled phases.

:func:`train` builds the optimizer, LR schedule and grad scaler, resumes from ``last`` when there
is one, then per epoch runs :func:`train_epoch` (per batch: set dropout → forward (autocast) →
check the loss is finite → backward (accumulate) → clip → step + LR schedule (+ the EMA of the
weights, with ``ema_decay``); after a step: a
validation when ``val_every_n_steps`` says so, ``step_<N>.pt`` when ``checkpoint_every_n_steps``
does) and :func:`end_epoch`. A validation (:func:`record_validation`: validate (the EMA when there is
one) → history row →
early stopping and time budget → checkpoints ``best``/``last`` → log) runs once per epoch by
default, or every ``val_every_n_steps`` optimizer steps and after the last. The stage ends after
``epochs`` epochs or at step ``max_steps`` — or, with ``epochs`` None (``auto``), at the step that
:mod:`~defect_pipeline.ml.engine.budget` estimates fills ``time_budget_s``. What changes on the way is one
:class:`~defect_pipeline.ml.engine.state.TrainState`; what stays fixed is one :class:`TrainingSetup`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any, NoReturn

import torch
from torch import nn
from tqdm.auto import tqdm

from defect_pipeline.ml.batch import Batch
from defect_pipeline.ml.checkpoint import CheckpointStore, restore_rng_state
from defect_pipeline.ml.dataset import reseed_augmentations
from defect_pipeline.ml.device import autocast
from defect_pipeline.ml.distributed import Processes, SingleProcess, all_finite, average_gradients
from defect_pipeline.ml.engine.interface import (
    EngineConfig,
    NonFiniteLossError,
    NullLogger,
    TrainingLogger,
    TrainResult,
)
from defect_pipeline.ml.engine.start import (
    already_finished,
    build_trainables,
    load_last,
    remove_stale_temp_files,
    resume_state,
)
from defect_pipeline.ml.engine.budget import PROVISIONAL_STEPS
from defect_pipeline.ml.engine.setup import TrainingSetup, follow_budget, start_budget
from defect_pipeline.ml.engine.state import EpochProgress, TrainState
from defect_pipeline.ml.engine.stop_signal import StopRequest
from defect_pipeline.ml.engine.validation import limit_batches, validate
from defect_pipeline.ml.memory import peak_rss_mb
from defect_pipeline.ml.metrics import MultitaskMetrics
from defect_pipeline.ml.schedules import dropout_at_step

logger = logging.getLogger(__name__)


def train(model: nn.Module, loss_fn: nn.Module, train_loader, val_loader, *, metrics: MultitaskMetrics,
          config: EngineConfig, store: CheckpointStore, meta: dict[str, Any],
          training_logger: TrainingLogger | None = None, processes: Processes | None = None,
          clock: Callable[[], float] = time.perf_counter) -> TrainResult:
    """Train one stage, resuming from ``store``'s ``last`` checkpoint when there is one.

    Args:
        model: a :class:`~defect_pipeline.ml.models.MultitaskNet` (already initialised).
        loss_fn: a :class:`~defect_pipeline.ml.losses.MultitaskLoss`.
        train_loader, val_loader: data loaders yielding ``image``/``mask``/``label`` batches.
        metrics: validation metric accumulator.
        config: resolved engine configuration.
        store: where ``best.pt``, ``last.pt`` and ``step_<N>.pt`` go.
        meta: what makes checkpoints self-describing: ``config`` (resolved parameters),
            ``model_meta`` (backbone, decoder, seg_mode, image_size), ``labels``,
            ``manifest_hash``, ``stage``.
        training_logger: receives per-epoch rows and checkpoint events (used on rank 0 only).
        processes: the process group this rank belongs to (default: this process alone). Every
            rank must call ``train`` with the same arguments; ``store`` must be the same folder
            for all (a shared file system across nodes).
        clock: seconds, monotonic: what the time budget is measured with (tests inject a fake one).
    """
    processes = processes or SingleProcess(config.device)
    monitor = config.monitor if config.monitor.startswith("val_") else f"val_{config.monitor}"
    limit = config.max_batches_per_epoch
    batches = len(train_loader) if limit is None else min(len(train_loader), limit)
    steps_per_epoch = max(1, math.ceil(batches / config.accumulate_grad_batches))
    parts = build_trainables(model, loss_fn, config, steps_per_epoch)
    if processes.is_main:
        remove_stale_temp_files(store)
    saved = load_last(store, meta) if config.resume else None
    if saved is not None and saved.get("finished"):
        return already_finished(saved, meta, monitor, store)
    state = TrainState() if saved is None else resume_state(saved, parts, meta, store, config)
    # DDP wraps after the weights are restored: it broadcasts rank 0's weights to every rank
    setup = TrainingSetup(parts, processes.wrap(model), train_loader, val_loader, metrics, config, store, meta,
                          training_logger or NullLogger(), processes, batches, config.total_steps(steps_per_epoch),
                          config.epochs_to_run(steps_per_epoch), monitor, clock)
    if config.spans_budget:  # epochs auto: the stage's length comes from time_budget_s
        setup.budget = start_budget(setup, state)
    if config.max_steps is not None:
        logger.info("%s: max_steps %d replaces epochs (%s): %d epoch(s) of %d optimizer steps", meta.get("stage"),
                    config.max_steps, config.epochs, setup.epochs, steps_per_epoch)
    with StopRequest(enabled=processes.world_size == 1) as stop:
        for epoch in range(state.epoch + 1, setup.epochs + 1):
            progress = train_epoch(setup, state, epoch, stop)  # phases 1-4 batch by batch (+ 5-7 every N steps)
            if not progress.closed:
                end_epoch(setup, state, progress, stop)  # phases 5-7 (or, validating every N steps, carry on)
            if state.stop_reason is not None or state.global_step >= setup.total_steps:
                break
    return TrainResult(state.history, state.best, state.best_epoch, state.epoch, state.global_step,
                       setup.total_steps, state.stop_reason is not None, resumed_from_epoch=state.resumed_from,
                       steps=state.steps, stop_reason=state.stop_reason, best_step=state.best_step,
                       budget_estimates=state.budget)


def train_epoch(setup: TrainingSetup, state: TrainState, epoch: int, stop: StopRequest) -> EpochProgress:
    """One pass over this rank's shard of the training set; how far the epoch got and its training figures.

    An interrupted epoch continues: its first ``batches_done`` batches are drawn again (same
    order, same augmentation draws) but not trained on, then the RNG states saved with them are
    restored. A stop signal saves ``last`` at the next optimizer-step boundary and stops. The
    epoch ends after its last batch or at step ``max_steps``; with ``val_every_n_steps`` it is
    closed here when a validation falls on its last step, or one stops the stage.
    """
    config = setup.config
    _seed_epoch(setup.train_loader, config.seed, epoch, setup.processes.rank)
    setup.trained.train()
    progress = state.start_epoch(epoch)
    progress.started = progress.started or time.perf_counter()  # a period carried on keeps its start
    setup.parts.optimizer.zero_grad(set_to_none=True)
    replayed = progress.batches_done
    of = "?" if setup.total_steps >= PROVISIONAL_STEPS else setup.epochs  # a time budget not yet measured
    bar = tqdm(total=setup.batches, desc=f"{setup.meta.get('stage', 'train')} epoch {epoch}/{of}",
               disable=not (config.progress and setup.processes.is_main), leave=False, mininterval=1.0)
    for index, batch in limit_batches(setup.train_loader, config.max_batches_per_epoch):
        if index < replayed:  # drawn again, not trained on again
            bar.update()
            if index == replayed - 1:
                restore_rng_state(progress.rng)  # the global RNG as it was after that batch's step
                if state.global_step >= setup.total_steps:  # resumed at step max_steps: no batch is left to draw
                    break
            continue
        steps_now = (index + 1) % config.accumulate_grad_batches == 0 or index + 1 == setup.batches
        loss = _train_batch(setup, state, progress, Batch.from_dict(batch), index, steps_now)
        bar.set_postfix(loss=f"{loss:.4f}")
        bar.update()
        if steps_now:
            _after_step(setup, state, progress, stop, last_batch=index + 1 == setup.batches)
            if stop.requested and not progress.closed:  # a step boundary: save where the next batch would start
                _save_and_stop(setup, state, progress, stop.requested)
            if progress.closed or state.global_step >= setup.total_steps:
                break
    bar.close()
    return progress


def _after_step(setup: TrainingSetup, state: TrainState, progress: EpochProgress, stop: StopRequest, *,
                last_batch: bool) -> None:
    """What follows optimizer step ``state.global_step``: with a time budget as length, its estimate when due;
    a validation every ``val_every_n_steps`` steps and after the stage's last (phases 5-7), ``step_<N>.pt``
    every ``checkpoint_every_n_steps`` steps."""
    if setup.budget is not None and setup.budget.step_ended():
        follow_budget(setup, state)
    config, step = setup.config, state.global_step
    if config.val_every_n_steps is not None and (step % config.val_every_n_steps == 0 or step >= setup.total_steps):
        record_validation(setup, state, progress, stop, epoch_over=last_batch or step >= setup.total_steps)
        if state.stop_reason is not None:
            return
        setup.trained.train()  # validation left the model in eval mode
    if config.checkpoint_every_n_steps is not None and step % config.checkpoint_every_n_steps == 0:
        _save_step_checkpoint(setup, state, progress)


def _train_batch(setup: TrainingSetup, state: TrainState, progress: EpochProgress, batch: Batch, index: int,
                 steps_now: bool) -> float:
    """The phases of one batch; ``steps_now``: it ends an accumulation (clip, step, schedule). Its loss."""
    config, parts, processes = setup.config, setup.parts, setup.processes
    # phase 1: dropout for this step (progressive: 0 until the warmup step)
    dropout = dropout_at_step(state.global_step, target=config.dropout_rate, warmup_step=config.dropout_warmup_step)
    parts.model.set_dropout(dropout)
    # phase 2: forward and loss (several processes: gradients are averaged only on step batches)
    batch = batch.to(config.device, non_blocking=True, channels_last=config.channels_last)
    with processes.no_sync(setup.trained, enabled=not steps_now):
        with autocast(config.device, config.precision):
            out = setup.trained(batch.image)
            loss = parts.loss_fn(out.seg_logits.float(), out.cls_logits.float(), batch.mask, batch.label,
                                 step=state.global_step, total_steps=setup.total_steps)
        # phase 3: backward, accumulated over accumulate_grad_batches batches; queued before the batch's one
        # wait for the device (its figures below), so a GPU computes while the CPU queues the backward
        parts.scaler.scale(loss.total / config.accumulate_grad_batches).backward()
    correct = (out.cls_logits.detach().argmax(dim=1) == batch.label).sum()  # training accuracy, no RNG
    total, cls, seg, correct = torch.stack([loss.total.detach().float(), loss.cls.float(), loss.seg.float(),
                                            correct.float()]).tolist()
    if not all_finite(processes, total):  # checked before the optimizer step: no weight sees these gradients
        parts.optimizer.zero_grad(set_to_none=True)
        raise NonFiniteLossError(
            f"non-finite loss at step {state.global_step}, epoch {progress.epoch}, batch {index} (this process: "
            f"{total}, cls {cls:.4g}, seg {seg:.4g}); weights were not updated and no "
            "checkpoint was written. Lower the learning rate or check this batch's images.")
    progress.add_batch(len(batch), total, cls, seg, loss.weights, correct)
    if steps_now:
        average_gradients(processes, list(parts.loss_fn.parameters()))
        progress.end_step(state.global_step + 1, dropout, parts.optimizer.param_groups)
        # phase 4: clip, step, schedule (and the EMA of the weights)
        if config.grad_clip is not None:
            parts.scaler.unscale_(parts.optimizer)
            torch.nn.utils.clip_grad_norm_([p for g in parts.optimizer.param_groups for p in g["params"]],
                                           config.grad_clip, error_if_nonfinite=config.precision != "fp16")
        parts.scaler.step(parts.optimizer)
        parts.scaler.update()
        parts.optimizer.zero_grad(set_to_none=True)
        parts.scheduler.step()
        state.global_step += 1
        if parts.ema is not None:  # the weights' moving average follows the step
            parts.ema.update(parts.model, step=state.global_step)
    return total


def end_epoch(setup: TrainingSetup, state: TrainState, progress: EpochProgress, stop: StopRequest) -> None:
    """The epoch's training is over: validate and record it (the default), or — validating every
    ``val_every_n_steps`` steps — close it and carry its figures since the last validation into the next."""
    if setup.config.val_every_n_steps is None:
        record_validation(setup, state, progress, stop, epoch_over=True)
        return
    state.close_epoch(progress)
    state.carried = progress
    if setup.processes.is_main:
        setup.log.log_steps(progress.steps[progress.steps_logged:])
    progress.steps_logged = len(progress.steps)


def record_validation(setup: TrainingSetup, state: TrainState, progress: EpochProgress, stop: StopRequest, *,
                      epoch_over: bool) -> None:
    """Validate (phase 5) and record it: one history row, early stopping and time budget
    (``state.stop_reason``, phase 6), checkpoints (``best`` when the monitored metric improved, ``last``
    always) and logging (phase 7). ``epoch_over``: the epoch's training is over (else the checkpoints
    hold how far into it the run got, and the next row's figures start here).

    Raises ``KeyboardInterrupt`` when a stop signal came during validation or the checkpoint
    (``last`` then holds this point).
    """
    config, epoch, parts = setup.config, progress.epoch, setup.parts
    validation_started = setup.clock()
    progress.train_seconds = time.perf_counter() - progress.started
    _sum_over_ranks(progress, setup.processes)
    val = validate(parts.evaluated, parts.loss_fn, setup.val_loader, setup.metrics, device=config.device,
                   precision=config.precision, step=state.global_step, total_steps=setup.total_steps,
                   processes=setup.processes)  # phase 5
    row = _epoch_row(setup, state, progress, val)
    state.history.append(row)
    # phase 6: early stopping bookkeeping
    value = float(row.get(setup.monitor, float("nan")))
    improved = _is_improvement(value, state.best, config.mode, config.min_delta)
    if improved:
        state.best, state.best_epoch, state.best_step, state.bad_epochs = value, epoch, state.global_step, 0
    else:
        state.bad_epochs += 1
    state.stop_reason = _stop_reason(setup, state)
    if epoch_over or state.stop_reason is not None:
        state.close_epoch(progress)
    else:
        progress.start_period()  # mid-epoch: the next row's figures start here (and so in the checkpoint)
    # phase 7: checkpoint (best when improved, last always) and log
    checkpoint = state.to_checkpoint(parts, meta=setup.meta, total_steps=setup.total_steps, monitor=setup.monitor,
                                     finished=state.stop_reason is not None or state.global_step >= setup.total_steps,
                                     partial_epoch=None if progress.closed else progress)
    if setup.processes.is_main:
        if improved:
            setup.log.log_checkpoint("best", setup.store.save("best", checkpoint))
        setup.log.log_checkpoint("last", setup.store.save("last", checkpoint))
        setup.log.log_steps(progress.steps[progress.steps_logged:])
        setup.log.log_epoch(epoch, state.global_step, row)
    progress.steps_logged = len(progress.steps)
    setup.processes.barrier()  # no rank runs ahead of the checkpoint it would resume from
    if setup.budget is not None:
        setup.budget.validation_took(setup.clock() - validation_started)
    if stop.requested:  # signalled during validation or the checkpoint: last.pt is this point
        message = (f"stopped by signal {stop.requested} after epoch {epoch}'s validation at step "
                   f"{state.global_step}: {setup.store.last_path} holds this point; run the stage again to continue")
        logger.warning(message)
        raise KeyboardInterrupt(message)
    progress.started = time.perf_counter()  # the next row's clock leaves the checkpoint and logging out
    _log_stop(setup, state)


def _log_stop(setup: TrainingSetup, state: TrainState) -> None:
    config, unit = setup.config, "epochs" if setup.config.val_every_n_steps is None else "validations"
    if state.stop_reason == "early_stopping":
        logger.info("early stopping at epoch %d (step %d): %s did not improve by more than %s for %d %s (best %.4g "
                    "at epoch %s, step %s)", state.epoch, state.global_step, setup.monitor, config.min_delta,
                    config.patience, unit, state.best, state.best_epoch, state.best_step)
    elif state.stop_reason == "time_budget":
        logger.info("time budget of %.0f s reached after epoch %d of %d (step %d; best %s %.4g at epoch %s)",
                    config.time_budget_s, state.epoch, setup.epochs, state.global_step, setup.monitor, state.best,
                    state.best_epoch)


def _save_step_checkpoint(setup: TrainingSetup, state: TrainState, progress: EpochProgress) -> None:
    """``step_<N>.pt`` after optimizer step ``N`` (resumable: copied over ``last.pt``, the stage continues from
    there); the oldest beyond ``keep_last_n`` removed."""
    if not setup.processes.is_main:
        return
    checkpoint = state.to_checkpoint(setup.parts, meta=setup.meta, total_steps=setup.total_steps,
                                     monitor=setup.monitor, partial_epoch=None if progress.closed else progress)
    setup.log.log_checkpoint("step", setup.store.save_step(state.global_step, checkpoint))
    for path in setup.store.remove_old_steps(setup.config.keep_last_n, newest=state.global_step):
        logger.info("removed %s (keep_last_n: %s)", path, setup.config.keep_last_n)


def _epoch_row(setup: TrainingSetup, state: TrainState, progress: EpochProgress,
               val: dict[str, float]) -> dict[str, Any]:
    """A history row: mean training losses and training accuracy (over the row's period: the epoch, or the
    batches since the last validation), validation figures, LRs, dropout, loss weights, timings
    (``epoch_seconds``: the period's),
    memory (peak RSS where the platform reports it; peak GPU memory on CUDA) and the torch CPU threads it ran
    with."""
    row: dict[str, Any] = {"epoch": progress.epoch, "global_step": state.global_step}
    row.update({k: v / max(progress.seen, 1) for k, v in progress.sums.items()})
    row.update(val)
    for group in setup.parts.optimizer.param_groups:
        row[f"lr_{group['name']}"] = group["lr"]
    row["dropout"] = dropout_at_step(max(state.global_step - 1, 0), target=setup.config.dropout_rate,
                                     warmup_step=setup.config.dropout_warmup_step)
    row.update({f"loss_weight_{k}": float(v) for k, v in progress.weights.items()})
    row["epoch_seconds"] = time.perf_counter() - progress.started
    row["train_samples_per_s"] = (progress.seen - progress.seen_before) / max(progress.train_seconds, 1e-9)
    if (peak_rss := peak_rss_mb()) is not None:  # absent where the platform cannot tell (docs/training.md)
        row["peak_rss_mb"] = peak_rss
    row["cpu_threads"] = torch.get_num_threads()  # runtime.cpu_threads, or torch's default when unset
    if torch.cuda.is_available() and setup.config.device.startswith("cuda"):
        row["peak_gpu_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return row


def _is_improvement(value: float, best: float | None, mode: str, min_delta: float) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value > best + min_delta if mode == "max" else value < best - min_delta


def _stop_reason(setup: TrainingSetup, state: TrainState) -> str | None:
    """``early_stopping`` (no improvement for ``patience`` validations) or ``time_budget`` before the last step."""
    config = setup.config
    if state.global_step >= setup.total_steps:
        return None
    if state.bad_epochs >= config.patience:
        return "early_stopping"
    if config.time_budget_s is not None and not config.spans_budget and setup.processes.broadcast(
            setup.clock() - setup.run_started >= config.time_budget_s):  # all ranks stop together
        return "time_budget"
    return None


def _save_and_stop(setup: TrainingSetup, state: TrainState, progress: EpochProgress, signum: int) -> NoReturn:
    """A stop signal came: save ``last`` here, with how far into the epoch it got, and stop."""
    checkpoint = state.to_checkpoint(setup.parts, meta=setup.meta, total_steps=setup.total_steps,
                                     monitor=setup.monitor, partial_epoch=progress)
    setup.log.log_checkpoint("last", setup.store.save("last", checkpoint))
    message = (f"stopped by signal {signum} at epoch {progress.epoch}, batch {progress.batches_done} of "
               f"{setup.batches}: {setup.store.last_path} holds the state after optimizer step {state.global_step}; "
               "run the stage again to continue from there")
    logger.warning(message)  # the CLI prints only "Aborted!" for a KeyboardInterrupt
    raise KeyboardInterrupt(message)


def _seed_epoch(loader, seed: int, epoch: int, rank: int = 0) -> None:
    """Make epoch ``epoch`` draw the same order and augmentations whether or not training resumed.

    One process: the loader's shuffle and the augmentations come from ``seed + epoch``. Several:
    the distributed sampler reshuffles from ``(seed, epoch)`` and each rank's augmentations get
    their own stream.
    """
    epoch_seed = seed + epoch + rank * 1_000_003
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    if getattr(loader, "generator", None) is not None:
        loader.generator.manual_seed(epoch_seed)
    reseed_augmentations(loader.dataset, epoch_seed)  # the transform and, for crops, the crop sampler


def _sum_over_ranks(progress: EpochProgress, processes: Processes) -> None:
    """Several processes: the training sums and sample count of all ranks together."""
    if processes.world_size > 1:
        keys = list(progress.sums)
        reduced = processes.sum(torch.tensor([progress.sums[k] for k in keys] + [float(progress.seen)],
                                             dtype=torch.float64))
        progress.sums, progress.seen = dict(zip(keys, (float(v) for v in reduced[:-1]))), int(reduced[-1])
