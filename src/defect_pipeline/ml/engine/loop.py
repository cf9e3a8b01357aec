"""The training loop: :func:`train` for one stage, read top to bottom in labelled phases.

:func:`train` builds the optimizer, LR schedule and grad scaler, resumes from ``last`` when there
is one, then per epoch runs :func:`train_epoch` (per batch: set dropout → forward (autocast) →
check the loss is finite → backward (accumulate) → clip → step + LR schedule),
:func:`~defect_pipeline.ml.engine.validation.validate` and :func:`end_epoch` (history row →
early stopping and time budget → checkpoints ``best``/``last`` → log). What changes on the way is
one :class:`~defect_pipeline.ml.engine.state.TrainState`; what stays fixed is one
:class:`TrainingSetup`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, NoReturn

import torch
from torch import nn
from tqdm.auto import tqdm

from defect_pipeline.ml.batch import Batch
from defect_pipeline.ml.checkpoint import CheckpointStore, check_compatible, restore_rng_state
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
from defect_pipeline.ml.engine.state import EpochProgress, Trainables, TrainState
from defect_pipeline.ml.engine.stop_signal import StopRequest
from defect_pipeline.ml.engine.validation import limit_batches, validate
from defect_pipeline.ml.memory import peak_rss_mb
from defect_pipeline.ml.metrics import MultitaskMetrics
from defect_pipeline.ml.schedules import create_scheduler, dropout_at_step

logger = logging.getLogger(__name__)


@dataclass
class TrainingSetup:
    """What stays fixed during one :func:`train` call: what is trained, on which data, where results go."""

    parts: Trainables
    trained: nn.Module  # parts.model as the forward pass sees it (several processes: its DDP wrapper)
    train_loader: Any
    config: EngineConfig
    store: CheckpointStore
    meta: dict[str, Any]
    log: TrainingLogger
    processes: Processes
    batches: int  # per epoch
    total_steps: int
    monitor: str  # the history column early stopping and ``best`` follow
    run_started: float = field(default_factory=time.perf_counter)


def train(model: nn.Module, loss_fn: nn.Module, train_loader, val_loader, *, metrics: MultitaskMetrics,
          config: EngineConfig, store: CheckpointStore, meta: dict[str, Any],
          training_logger: TrainingLogger | None = None, processes: Processes | None = None) -> TrainResult:
    """Train one stage, resuming from ``store``'s ``last`` checkpoint when there is one.

    Args:
        model: a :class:`~defect_pipeline.ml.models.MultitaskNet` (already initialised).
        loss_fn: a :class:`~defect_pipeline.ml.losses.MultitaskLoss`.
        train_loader, val_loader: data loaders yielding ``image``/``mask``/``label`` batches.
        metrics: validation metric accumulator.
        config: resolved engine configuration.
        store: where ``best.pt`` and ``last.pt`` go.
        meta: what makes checkpoints self-describing: ``config`` (resolved parameters),
            ``model_meta`` (backbone, decoder, seg_mode, image_size), ``labels``,
            ``manifest_hash``, ``stage``.
        training_logger: receives per-epoch rows and checkpoint events (used on rank 0 only).
        processes: the process group this rank belongs to (default: this process alone). Every
            rank must call ``train`` with the same arguments; ``store`` must be the same folder
            for all (a shared file system across nodes).
    """
    processes = processes or SingleProcess(config.device)
    monitor = config.monitor if config.monitor.startswith("val_") else f"val_{config.monitor}"
    limit = config.max_batches_per_epoch
    batches = len(train_loader) if limit is None else min(len(train_loader), limit)
    steps_per_epoch = max(1, math.ceil(batches / config.accumulate_grad_batches))
    parts = _build_trainables(model, loss_fn, config, steps_per_epoch)
    if processes.is_main:
        _remove_stale_temp_files(store)
    saved = _load_last(store, meta) if config.resume else None
    if saved is not None and saved.get("finished"):
        return _already_finished(saved, meta, monitor, store)
    state = TrainState() if saved is None else _resume(saved, parts, meta, store, config)
    # DDP wraps after the weights are restored: it broadcasts rank 0's weights to every rank
    setup = TrainingSetup(parts, processes.wrap(model), train_loader, config, store, meta,
                          training_logger or NullLogger(), processes, batches, steps_per_epoch * config.epochs, monitor)
    with StopRequest(enabled=processes.world_size == 1) as stop:
        for epoch in range(state.epoch + 1, config.epochs + 1):
            progress = train_epoch(setup, state, epoch, stop)  # phases 1-4, batch by batch
            val = validate(model, loss_fn, val_loader, metrics, device=config.device, precision=config.precision,
                           step=state.global_step, total_steps=setup.total_steps, processes=processes)  # phase 5
            end_epoch(setup, state, progress, val, stop)  # phases 6-7
            if state.stop_reason is not None:
                break
    return TrainResult(state.history, state.best, state.best_epoch, state.epoch, state.global_step,
                       setup.total_steps, state.stop_reason is not None, resumed_from_epoch=state.resumed_from,
                       steps=state.steps, stop_reason=state.stop_reason)


def train_epoch(setup: TrainingSetup, state: TrainState, epoch: int, stop: StopRequest) -> EpochProgress:
    """One pass over this rank's shard of the training set; the epoch's figures, summed over the ranks.

    An interrupted epoch continues: its first ``batches_done`` batches are drawn again (same
    order, same augmentation draws) but not trained on, then the RNG states saved with them are
    restored. A stop signal saves ``last`` at the next optimizer-step boundary and stops.
    """
    config = setup.config
    _seed_epoch(setup.train_loader, config.seed, epoch, setup.processes.rank)
    setup.trained.train()
    progress = state.start_epoch(epoch)
    progress.started = time.perf_counter()
    setup.parts.optimizer.zero_grad(set_to_none=True)
    replayed = progress.batches_done
    bar = tqdm(total=setup.batches, desc=f"{setup.meta.get('stage', 'train')} epoch {epoch}/{config.epochs}",
               disable=not (config.progress and setup.processes.is_main), leave=False, mininterval=1.0)
    for index, batch in limit_batches(setup.train_loader, config.max_batches_per_epoch):
        if index < replayed:  # drawn again, not trained on again
            if index == replayed - 1:
                restore_rng_state(progress.rng)  # the global RNG as it was after that batch's step
            bar.update()
            continue
        steps_now = (index + 1) % config.accumulate_grad_batches == 0 or index + 1 == setup.batches
        loss = _train_batch(setup, state, progress, Batch.from_dict(batch), index, steps_now)
        bar.set_postfix(loss=f"{loss:.4f}")
        bar.update()
        if stop.requested and steps_now:  # a step boundary: save where the next batch would start
            _save_and_stop(setup, state, progress, stop.requested)
    bar.close()
    progress.train_seconds = time.perf_counter() - progress.started
    _sum_over_ranks(progress, setup.processes)
    return progress


def _train_batch(setup: TrainingSetup, state: TrainState, progress: EpochProgress, batch: Batch, index: int,
                 steps_now: bool) -> float:
    """The phases of one batch; ``steps_now``: it ends an accumulation (clip, step, schedule). Its loss."""
    config, parts, processes = setup.config, setup.parts, setup.processes
    # phase 1: dropout for this step (progressive: 0 until the warmup step)
    dropout = dropout_at_step(state.global_step, target=config.dropout_rate, warmup_step=config.dropout_warmup_step)
    parts.model.set_dropout(dropout)
    # phase 2: forward and loss (several processes: gradients are averaged only on step batches)
    batch = batch.to(config.device)
    with processes.no_sync(setup.trained, enabled=not steps_now):
        with autocast(config.device, config.precision):
            out = setup.trained(batch.image)
            loss = parts.loss_fn(out.seg_logits.float(), out.cls_logits.float(), batch.mask, batch.label,
                                 step=state.global_step, total_steps=setup.total_steps)
        total = float(loss.total.detach())
        finite = all_finite(processes, total)
        # phase 3: backward, accumulated over accumulate_grad_batches batches
        if finite:
            parts.scaler.scale(loss.total / config.accumulate_grad_batches).backward()
    if not finite:
        raise NonFiniteLossError(
            f"non-finite loss at step {state.global_step}, epoch {progress.epoch}, batch {index} (this process: "
            f"{total}, cls {float(loss.cls):.4g}, seg {float(loss.seg):.4g}); weights were not updated and no "
            "checkpoint was written. Lower the learning rate or check this batch's images.")
    correct = float((out.cls_logits.detach().argmax(dim=1) == batch.label).sum())  # training accuracy, no RNG
    progress.add_batch(len(batch), total, loss, correct)
    if steps_now:
        average_gradients(processes, list(parts.loss_fn.parameters()))
        progress.end_step(state.global_step + 1, dropout, parts.optimizer.param_groups)
        # phase 4: clip, step, schedule
        if config.grad_clip is not None:
            parts.scaler.unscale_(parts.optimizer)
            torch.nn.utils.clip_grad_norm_([p for g in parts.optimizer.param_groups for p in g["params"]],
                                           config.grad_clip, error_if_nonfinite=config.precision != "fp16")
        parts.scaler.step(parts.optimizer)
        parts.scaler.update()
        parts.optimizer.zero_grad(set_to_none=True)
        parts.scheduler.step()
        state.global_step += 1
    return total


def end_epoch(setup: TrainingSetup, state: TrainState, progress: EpochProgress, val: dict[str, float],
              stop: StopRequest) -> None:
    """Close the epoch: its history row, early stopping and time budget (``state.stop_reason``),
    checkpoints (``best`` when the monitored metric improved, ``last`` always) and logging.

    Raises ``KeyboardInterrupt`` when a stop signal came during validation or the checkpoint
    (``last`` then holds this epoch's end).
    """
    config, epoch = setup.config, progress.epoch
    row = _epoch_row(setup, state, progress, val)
    state.epoch = epoch
    state.history.append(row)
    state.steps.extend(progress.steps)
    # phase 6: early stopping bookkeeping
    value = float(row.get(setup.monitor, float("nan")))
    improved = _is_improvement(value, state.best, config.mode, config.min_delta)
    if improved:
        state.best, state.best_epoch, state.bad_epochs = value, epoch, 0
    else:
        state.bad_epochs += 1
    state.stop_reason = _stop_reason(setup, state)
    # phase 7: checkpoint (best when improved, last always) and log
    checkpoint = state.to_checkpoint(setup.parts, meta=setup.meta, total_steps=setup.total_steps,
                                     monitor=setup.monitor,
                                     finished=state.stop_reason is not None or epoch == config.epochs)
    if setup.processes.is_main:
        if improved:
            setup.log.log_checkpoint("best", setup.store.save("best", checkpoint))
        setup.log.log_checkpoint("last", setup.store.save("last", checkpoint))
        setup.log.log_steps(progress.steps)
        setup.log.log_epoch(epoch, state.global_step, row)
    setup.processes.barrier()  # no rank runs ahead of the checkpoint it would resume from
    if stop.requested:  # signalled during validation or the checkpoint: last.pt is this epoch's end
        message = (f"stopped by signal {stop.requested} after epoch {epoch}: {setup.store.last_path} holds its "
                   "end; run the stage again to continue")
        logger.warning(message)
        raise KeyboardInterrupt(message)
    if state.stop_reason == "early_stopping":
        logger.info("early stopping at epoch %d: %s did not improve by more than %s for %d epochs (best %.4g at "
                    "epoch %s)", epoch, setup.monitor, config.min_delta, config.patience, state.best, state.best_epoch)
    elif state.stop_reason == "time_budget":
        logger.info("time budget of %.0f s reached after epoch %d of %d (best %s %.4g at epoch %s)",
                    config.time_budget_s, epoch, config.epochs, setup.monitor, state.best, state.best_epoch)


def _epoch_row(setup: TrainingSetup, state: TrainState, progress: EpochProgress,
               val: dict[str, float]) -> dict[str, Any]:
    """The epoch's history row: mean training losses and training accuracy, validation figures, LRs, dropout, loss weights, timings,
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
    """``early_stopping`` (no improvement for ``patience`` epochs) or ``time_budget`` before the last epoch."""
    config = setup.config
    if state.epoch >= config.epochs:
        return None
    if state.bad_epochs >= config.patience:
        return "early_stopping"
    if config.time_budget_s is not None and setup.processes.broadcast(
            time.perf_counter() - setup.run_started >= config.time_budget_s):  # all ranks stop together
        return "time_budget"
    return None


def build_optimizer(model: nn.Module, loss_fn: nn.Module, *, lr: float, backbone_lr: float,
                    weight_decay: float, freeze_backbone: bool) -> torch.optim.AdamW:
    """AdamW with backbone/head groups; no weight decay on norms and biases (1-D tensors)."""
    backbone_ids = {id(p) for p in model.backbone.parameters()}
    groups: dict[str, list[nn.Parameter]] = {"backbone": [], "backbone_no_decay": [], "head": [], "head_no_decay": []}
    for param in model.parameters():
        if not param.requires_grad:
            continue
        part = "backbone" if id(param) in backbone_ids else "head"
        if part == "backbone" and freeze_backbone:
            continue
        groups[part + ("_no_decay" if param.ndim <= 1 else "")].append(param)
    groups["head_no_decay"].extend(p for p in loss_fn.parameters() if p.requires_grad)
    param_groups = [
        {"name": name, "params": params, "lr": backbone_lr if name.startswith("backbone") else lr,
         "weight_decay": 0.0 if name.endswith("no_decay") else weight_decay}
        for name, params in groups.items() if params
    ]
    return torch.optim.AdamW(param_groups, lr=lr)


def _build_trainables(model: nn.Module, loss_fn: nn.Module, config: EngineConfig, steps_per_epoch: int) -> Trainables:
    """Model and loss on the device, backbone frozen or not, optimizer, LR schedule and grad scaler."""
    model.to(config.device)
    loss_fn.to(config.device)
    model.freeze_backbone(config.freeze_backbone)
    optimizer = build_optimizer(model, loss_fn, lr=config.lr, backbone_lr=config.backbone_lr,
                                weight_decay=config.weight_decay, freeze_backbone=config.freeze_backbone)
    scheduler = create_scheduler(optimizer, **config.lr_schedule(steps_per_epoch))
    scaler = torch.amp.GradScaler(config.device.split(":")[0], enabled=config.precision == "fp16")
    return Trainables(model, loss_fn, optimizer, scheduler, scaler)


def _remove_stale_temp_files(store: CheckpointStore) -> None:
    stale = store.remove_stale_temp_files()
    if stale:
        logger.warning("removed %d temp file(s) an interrupted checkpoint write left in %s: %s", len(stale),
                       store.path, ", ".join(stale))


def _load_last(store: CheckpointStore, meta: dict[str, Any]) -> dict[str, Any] | None:
    """``last.pt`` if there is one, refused when written for another architecture or class list."""
    if not store.has_last():
        return None
    checkpoint = store.load("last")
    model_meta = meta["model_meta"]
    check_compatible(checkpoint, backbone=model_meta["backbone"], decoder=model_meta["decoder"],
                     seg_mode=model_meta["seg_mode"], labels=meta["labels"], source=str(store.last_path))
    return checkpoint


def _already_finished(checkpoint: dict[str, Any], meta: dict[str, Any], monitor: str,
                      store: CheckpointStore) -> TrainResult:
    logger.warning("stage %s already finished (%d epochs, best %s = %s); nothing to do. Delete %s "
                   "or set resume: false to train again.", meta.get("stage"), checkpoint["epoch"], monitor,
                   checkpoint.get("best_metric"), store.path)
    return TrainResult(list(checkpoint["history"]), checkpoint.get("best_metric"), checkpoint.get("best_epoch"),
                       checkpoint["epoch"], checkpoint["global_step"], checkpoint["total_steps"],
                       bool(checkpoint.get("stopped_early")), already_finished=True,
                       summary=dict(checkpoint.get("summary", {})), steps=list(checkpoint.get("steps", [])))


def _resume(checkpoint: dict[str, Any], parts: Trainables, meta: dict[str, Any], store: CheckpointStore,
            config: EngineConfig) -> TrainState:
    state = TrainState.from_checkpoint(checkpoint, parts)
    partial = state.partial
    logger.info("resuming stage %s from %s (epoch %d of %d%s)", meta.get("stage"), store.last_path, state.epoch,
                config.epochs, f", then {partial.batches_done} batches of epoch {partial.epoch}" if partial else "")
    return state


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
