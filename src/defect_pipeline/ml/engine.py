"""The training engine: one readable loop, resumable, with every knob of a stage.

Per optimizer step the loop goes through labelled phases — set dropout → forward (autocast) →
check the loss is finite → backward (accumulate) → clip → step + LR schedule — and per epoch:
evaluate → early-stopping bookkeeping → checkpoint (``best`` when the monitored metric improved,
``last`` always) → log. Side effects go through a :class:`TrainingLogger` the caller injects
and a :class:`~defect_pipeline.ml.checkpoint.CheckpointStore`, so the engine is testable with a
no-op logger and a temp folder. Resuming from ``last`` restores model, optimizer, scheduler,
scaler, RNG states and history; the data order and augmentations of epoch ``e`` are seeded from
``seed + e``, so an interrupted run continues exactly as an uninterrupted one would (on CPU).

The loop runs in one process or as one rank of several (``processes``, see
:mod:`defect_pipeline.ml.distributed`): each rank trains on its shard of the training set through
DistributedDataParallel, validation sums and confusion matrices are added up over the ranks (so
the metrics are those of the whole validation set), and only rank 0 writes checkpoints and logs.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import resource
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from defect_pipeline.ml.checkpoint import CheckpointStore, capture_rng_state, check_compatible, restore_rng_state
from defect_pipeline.ml.dataset import create_dataloader
from defect_pipeline.ml.distributed import Processes, SingleProcess, all_finite, average_gradients
from defect_pipeline.ml.metrics import MultitaskMetrics
from defect_pipeline.ml.schedules import create_scheduler, dropout_at_step

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN/inf: training stops before the weights are touched."""


class TrainingLogger(Protocol):
    """Receives per-epoch rows and checkpoint events (MLflow, files, or nothing).

    A logger may also define ``log_steps(rows)``: it then receives, once per epoch before
    ``log_epoch``, that epoch's per-optimizer-step rows (``step``, ``epoch``, ``dropout``,
    ``lr_<group>``, ``train_loss``).
    """

    def log_epoch(self, epoch: int, step: int, row: dict[str, float]) -> None: ...

    def log_checkpoint(self, kind: str, path: Path) -> None: ...


class NullLogger:
    """A :class:`TrainingLogger` that only writes to the Python log."""

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


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True when bf16 matmuls are measurably faster than fp32 on this CPU.

    CPU flags are not enough: a virtual CPU may advertise AVX512-BF16 and still run bf16 slower
    than fp32 (seen on the CI machines: 1.9× slower). So the flags are a precondition and a
    few-millisecond matmul benchmark decides; bf16 must be at least 1.25× faster.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    if "amx_bf16" not in flags and "avx512_bf16" not in flags:
        return False

    def seconds(dtype: torch.dtype) -> float:
        a = torch.randn(384, 384).to(dtype)
        b = torch.randn(384, 384).to(dtype)
        a @ b  # warm-up
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        return time.perf_counter() - start

    return seconds(torch.bfloat16) * 1.25 < seconds(torch.float32)


def resolve_device(requested: str) -> str:
    """``auto`` → ``cuda`` when available, else ``cpu``."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {requested!r} requested but CUDA is not available; use device: auto or cpu")
    return requested


def resolve_precision(requested: str, device: str) -> str:
    """Pick the autocast precision by capability.

    ``auto``: bf16 (or fp16 where bf16 is unsupported) on CUDA; on CPU bf16 only where it is
    measured to be faster than fp32 (:func:`cpu_has_fast_bf16`), otherwise fp32 — on AVX2-only
    CPUs bf16 matmuls are 50–400× slower.
    """
    on_cuda = device.startswith("cuda")
    if requested == "auto":
        if on_cuda:
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    if requested == "fp16" and not on_cuda:
        raise ValueError("precision fp16 needs a CUDA device; use fp32 (or bf16 on CPUs with AMX/AVX512-BF16)")
    if requested == "bf16" and not on_cuda and not cpu_has_fast_bf16():
        logger.warning("precision bf16 on a CPU without native bf16 support is much slower than fp32")
    return requested


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


def _autocast(device: str, precision: str):
    if precision == "fp32":
        return torch.autocast(device_type=device.split(":")[0], enabled=False)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.split(":")[0], dtype=dtype)


def _batches(loader, limit: int | None) -> Iterator[tuple[int, dict]]:
    for index, batch in enumerate(loader):
        if limit is not None and index >= limit:
            return
        yield index, batch


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
    transform = getattr(loader.dataset, "transform", None)
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(epoch_seed)


class _StopRequest:
    """Ctrl-C / SIGTERM during training: finish the batch (to an optimizer step), save ``last``, stop.

    While training, in the main thread of a single-process run, the first SIGINT or SIGTERM only
    records the request; the loop saves the state at the next optimizer-step boundary as ``last``
    (with how far into the epoch it got) and raises ``KeyboardInterrupt``. A second signal stops
    at once. The previous handlers are restored when training ends. Several processes: the
    launching process stops the workers, and ``last`` is the last finished epoch.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        if self.enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt(f"signal {signum} again: stopping without a last checkpoint of this step")
        self.requested = signum
        logger.warning("signal %d: finishing this optimizer step, saving the last checkpoint, then stopping "
                       "(send it again to stop at once)", signum)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@torch.no_grad()
def evaluate(model: nn.Module, loss_fn: nn.Module, loader, metrics: MultitaskMetrics, *, device: str,
             precision: str, step: int, total_steps: int, limit: int | None = None,
             processes: Processes | None = None) -> dict[str, float]:
    """Validation loss and metrics over the loader (deterministic: no augmentation, fixed order),
    and the evaluation throughput ``val_samples_per_s``.

    With several ``processes`` each evaluates its shard and the loss sums, sample counts and
    confusion matrices are summed over the ranks: every rank returns the whole set's figures.
    ``model`` must then be the unwrapped module (no collective in its forward).
    """
    processes = processes or SingleProcess(device)
    model.eval()
    metrics.reset()
    total, count, started = 0.0, 0, time.perf_counter()
    for _, batch in _batches(loader, limit):
        image, mask, label = (batch[k].to(device) for k in ("image", "mask", "label"))
        with _autocast(device, precision):
            out = model(image)
            loss = loss_fn(out.seg_logits.float(), out.cls_logits.float(), mask, label, step=step,
                           total_steps=total_steps)
        total += float(loss.total.detach()) * image.shape[0]
        count += image.shape[0]
        metrics.update(out.seg_logits.float(), out.cls_logits.float(), mask, label)
    total, count = (float(v) for v in processes.sum(torch.tensor([total, float(count)], dtype=torch.float64)))
    result = {"val_loss": total / max(count, 1)}
    reduce = processes.sum if processes.world_size > 1 else None
    result.update({f"val_{k}": float(v) for k, v in metrics.compute(reduce=reduce).items()})
    result["val_samples_per_s"] = count / max(time.perf_counter() - started, 1e-9)
    return result


def _is_improvement(value: float, best: float | None, mode: str, min_delta: float) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value > best + min_delta if mode == "max" else value < best - min_delta


def train(model: nn.Module, loss_fn: nn.Module, train_loader, val_loader, *, metrics: MultitaskMetrics,
          config: EngineConfig, store: CheckpointStore, meta: dict[str, Any],
          training_logger: TrainingLogger | None = None, processes: Processes | None = None) -> TrainResult:
    """Train one stage, resuming from ``store``'s ``last`` checkpoint when there is one.

    Args:
        model: a :class:`~defect_pipeline.ml.model.MultitaskNet` (already initialised).
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
    main = processes.is_main
    log = training_logger or NullLogger()
    device = config.device
    monitor = f"val_{config.monitor}" if not config.monitor.startswith("val_") else config.monitor
    model.to(device)
    loss_fn.to(device)
    model.freeze_backbone(config.freeze_backbone)
    optimizer = build_optimizer(model, loss_fn, lr=config.lr, backbone_lr=config.backbone_lr,
                                weight_decay=config.weight_decay, freeze_backbone=config.freeze_backbone)
    batches = len(train_loader) if config.max_batches_per_epoch is None else min(len(train_loader), config.max_batches_per_epoch)
    steps_per_epoch = max(1, math.ceil(batches / config.accumulate_grad_batches))
    total_steps = steps_per_epoch * config.epochs
    scheduler = create_scheduler(optimizer, total_steps=total_steps,
                                 warmup_steps=round(config.warmup_epochs * steps_per_epoch),
                                 warmup_lr_ratio=config.warmup_lr_ratio, eta_min_ratio=config.eta_min_ratio)
    scaler = torch.amp.GradScaler(device.split(":")[0], enabled=config.precision == "fp16")

    stale = store.remove_stale_temp_files() if main else []
    if stale:
        logger.warning("removed %d temp file(s) an interrupted checkpoint write left in %s: %s", len(stale),
                       store.path, ", ".join(stale))
    history: list[dict[str, Any]] = []
    steps: list[dict[str, Any]] = []
    start_epoch, global_step, best, best_epoch, bad_epochs = 0, 0, None, None, 0
    resumed_from = None
    partial: dict[str, Any] | None = None  # an epoch interrupted after some optimizer steps
    if config.resume and store.has_last():
        state = store.load("last")
        check_compatible(state, backbone=meta["model_meta"]["backbone"], decoder=meta["model_meta"]["decoder"],
                         seg_mode=meta["model_meta"]["seg_mode"], labels=meta["labels"], source=str(store.last_path))
        history = list(state["history"])
        steps = list(state.get("steps", []))
        if state.get("finished"):
            logger.warning("stage %s already finished (%d epochs, best %s = %s); nothing to do. Delete %s "
                           "or set resume: false to train again.", meta.get("stage"), state["epoch"], monitor,
                           state.get("best_metric"), store.path)
            return TrainResult(history, state.get("best_metric"), state.get("best_epoch"), state["epoch"],
                               state["global_step"], state["total_steps"], bool(state.get("stopped_early")),
                               already_finished=True, summary=dict(state.get("summary", {})),
                               steps=list(state.get("steps", [])))
        model.load_state_dict(state["model"])
        loss_fn.load_state_dict(state["loss"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        partial = state.get("partial_epoch")
        if partial is None:
            restore_rng_state(state["rng"])
        else:  # restored once the epoch's first batches_done batches were drawn again (see below)
            partial = {**partial, "rng": state["rng"]}
        start_epoch, global_step = state["epoch"], state["global_step"]
        best, best_epoch, bad_epochs = state.get("best_metric"), state.get("best_epoch"), state.get("bad_epochs", 0)
        resumed_from = start_epoch
        logger.info("resuming stage %s from %s (epoch %d of %d%s)", meta.get("stage"), store.last_path,
                    start_epoch, config.epochs,
                    f", then {partial['batches_done']} batches of epoch {partial['epoch']}" if partial else "")
    # DDP wraps after the weights are restored: it broadcasts rank 0's weights to every rank
    trained = processes.wrap(model)

    def checkpoint(epoch_done: int, **extra: Any) -> dict[str, Any]:
        return {**meta, "model": model.state_dict(), "loss": loss_fn.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": capture_rng_state(),
                "epoch": epoch_done, "global_step": global_step, "total_steps": total_steps, "monitor": monitor,
                "best_metric": best, "best_epoch": best_epoch, "bad_epochs": bad_epochs, "history": history,
                "steps": steps, "finished": False, "stopped_early": False, **extra}

    stopped_early = False
    stop_reason = None
    epoch = start_epoch
    run_started = time.perf_counter()
    with _StopRequest(enabled=processes.world_size == 1) as stop:
        for epoch in range(start_epoch + 1, config.epochs + 1):
            _seed_epoch(train_loader, config.seed, epoch, processes.rank)
            trained.train()
            started, seen = time.perf_counter(), 0
            sums = {"train_loss": 0.0, "train_cls_loss": 0.0, "train_seg_loss": 0.0}
            optimizer.zero_grad(set_to_none=True)
            bar = tqdm(total=batches, desc=f"{meta.get('stage', 'train')} epoch {epoch}/{config.epochs}",
                       disable=not (config.progress and main), leave=False, mininterval=1.0)
            weights: dict[str, float] = {}
            epoch_steps: list[dict[str, Any]] = []
            accumulated_loss, accumulated_batches = 0.0, 0
            skip, seen_before = 0, 0
            if partial is not None and partial["epoch"] == epoch:  # continue an interrupted epoch
                skip, sums, seen = partial["batches_done"], dict(partial["sums"]), partial["seen"]
                epoch_steps, weights, seen_before = list(partial["steps"]), dict(partial["weights"]), partial["seen"]
            for index, batch in _batches(train_loader, config.max_batches_per_epoch):
                if index < skip:  # drawn again (same order, same augmentation draws), not trained on again
                    if index == skip - 1:
                        restore_rng_state(partial["rng"])  # the global RNG as it was after that batch's step
                    bar.update()
                    continue
                # phase 1: dropout for this step (progressive: 0 until the warmup step)
                dropout = dropout_at_step(global_step, target=config.dropout_rate,
                                          warmup_step=config.dropout_warmup_step)
                model.set_dropout(dropout)
                last_batch = index + 1 == batches
                steps_now = (index + 1) % config.accumulate_grad_batches == 0 or last_batch
                # phase 2: forward and loss (several processes: gradients are averaged only on step batches)
                image, mask, label = (batch[k].to(device) for k in ("image", "mask", "label"))
                with processes.no_sync(trained, enabled=not steps_now):
                    with _autocast(device, config.precision):
                        out = trained(image)
                        loss = loss_fn(out.seg_logits.float(), out.cls_logits.float(), mask, label,
                                       step=global_step, total_steps=total_steps)
                    total_value = float(loss.total.detach())
                    finite = all_finite(processes, total_value)
                    # phase 3: backward, accumulated over accumulate_grad_batches batches
                    if finite:
                        scaler.scale(loss.total / config.accumulate_grad_batches).backward()
                if not finite:
                    raise NonFiniteLossError(
                        f"non-finite loss at step {global_step}, epoch {epoch}, batch {index} (this process: "
                        f"{total_value}, cls {float(loss.cls):.4g}, seg {float(loss.seg):.4g}); weights were not "
                        "updated and no "
                        "checkpoint was written. Lower the learning rate or check this batch's images."
                    )
                accumulated_loss += total_value
                accumulated_batches += 1
                if steps_now:
                    average_gradients(processes, list(loss_fn.parameters()))
                    step_row: dict[str, Any] = {"step": global_step + 1, "epoch": epoch, "dropout": dropout,
                                                "train_loss": accumulated_loss / accumulated_batches}
                    step_row.update({f"lr_{g['name']}": g["lr"] for g in optimizer.param_groups})
                    epoch_steps.append(step_row)
                    accumulated_loss, accumulated_batches = 0.0, 0
                    # phase 4: clip, step, schedule
                    if config.grad_clip is not None:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(
                            [p for g in optimizer.param_groups for p in g["params"]], config.grad_clip,
                            error_if_nonfinite=config.precision != "fp16")
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    scheduler.step()
                    global_step += 1
                n = image.shape[0]
                seen += n
                sums["train_loss"] += total_value * n
                sums["train_cls_loss"] += float(loss.cls) * n
                sums["train_seg_loss"] += float(loss.seg) * n
                weights = loss.weights
                bar.set_postfix(loss=f"{total_value:.4f}")
                bar.update()
                if stop.requested and steps_now:  # a step boundary: save where the next batch would start
                    state = checkpoint(epoch - 1, partial_epoch={
                        "epoch": epoch, "batches_done": index + 1, "sums": sums, "seen": seen, "steps": epoch_steps,
                        "weights": {k: float(v) for k, v in weights.items()}})
                    log.log_checkpoint("last", store.save("last", state))
                    message = (f"stopped by signal {stop.requested} at epoch {epoch}, batch {index + 1} of {batches}: "
                               f"{store.last_path} holds the state after optimizer step {global_step}; run the stage "
                               "again to continue from there")
                    logger.warning(message)  # the CLI prints only "Aborted!" for a KeyboardInterrupt
                    raise KeyboardInterrupt(message)
            bar.close()
            train_seconds = time.perf_counter() - started
            if processes.world_size > 1:  # training figures of all ranks together
                keys = list(sums)
                reduced = processes.sum(torch.tensor([sums[k] for k in keys] + [float(seen)], dtype=torch.float64))
                sums, seen = dict(zip(keys, (float(v) for v in reduced[:-1]))), int(reduced[-1])
            # phase 5: evaluate
            val = evaluate(model, loss_fn, val_loader, metrics, device=device, precision=config.precision,
                           step=global_step, total_steps=total_steps, processes=processes)
            row: dict[str, Any] = {"epoch": epoch, "global_step": global_step}
            row.update({k: v / max(seen, 1) for k, v in sums.items()})
            row.update(val)
            for group in optimizer.param_groups:
                row[f"lr_{group['name']}"] = group["lr"]
            row["dropout"] = dropout_at_step(max(global_step - 1, 0), target=config.dropout_rate,
                                             warmup_step=config.dropout_warmup_step)
            row.update({f"loss_weight_{k}": float(v) for k, v in weights.items()})
            steps.extend(epoch_steps)
            row["epoch_seconds"] = time.perf_counter() - started
            row["train_samples_per_s"] = (seen - seen_before) / max(train_seconds, 1e-9)
            row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            if torch.cuda.is_available() and device.startswith("cuda"):
                row["peak_gpu_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
            history.append(row)
            # phase 6: early stopping bookkeeping
            value = float(row.get(monitor, float("nan")))
            improved = _is_improvement(value, best, config.mode, config.min_delta)
            if improved:
                best, best_epoch, bad_epochs = value, epoch, 0
            else:
                bad_epochs += 1
            stopped_early = bad_epochs >= config.patience and epoch < config.epochs
            if stopped_early:
                stop_reason = "early_stopping"
            elif (config.time_budget_s is not None and epoch < config.epochs
                  and processes.broadcast(time.perf_counter() - run_started >= config.time_budget_s)):
                stopped_early, stop_reason = True, "time_budget"
            finished = stopped_early or epoch == config.epochs
            # phase 7: checkpoint (best when improved, last always) and log
            state = checkpoint(epoch, finished=finished, stopped_early=stopped_early)
            if main:
                if improved:
                    log.log_checkpoint("best", store.save("best", state))
                log.log_checkpoint("last", store.save("last", state))
                if hasattr(log, "log_steps"):
                    log.log_steps(epoch_steps)
                log.log_epoch(epoch, global_step, row)
            processes.barrier()  # no rank runs ahead of the checkpoint it would resume from
            if stop.requested:  # signalled during validation or the checkpoint: last.pt is this epoch's end
                message = (f"stopped by signal {stop.requested} after epoch {epoch}: {store.last_path} holds its "
                           "end; run the stage again to continue")
                logger.warning(message)
                raise KeyboardInterrupt(message)
            if stop_reason == "early_stopping":
                logger.info("early stopping at epoch %d: %s did not improve by more than %s for %d epochs "
                            "(best %.4g at "
                            "epoch %s)", epoch, monitor, config.min_delta, config.patience, best, best_epoch)
                break
            if stop_reason == "time_budget":
                logger.info("time budget of %.0f s reached after epoch %d of %d (best %s %.4g at epoch %s)",
                            config.time_budget_s, epoch, config.epochs, monitor, best, best_epoch)
                break
    return TrainResult(history, best, best_epoch, epoch, global_step, total_steps, stopped_early,
                       resumed_from_epoch=resumed_from, steps=steps, stop_reason=stop_reason)


@dataclass
class TrainingJob:
    """Everything one stage's training needs, picklable so that worker processes can receive it."""

    model: nn.Module
    loss_fn: nn.Module
    train_set: Any  # a map-style dataset of image/mask/label samples
    val_set: Any
    metrics: MultitaskMetrics
    config: EngineConfig
    store: CheckpointStore
    meta: dict[str, Any]
    batch_size: int  # per process
    num_workers: int = 0
    training_logger: TrainingLogger | None = None
    cpu_threads: int | None = None


def run_training_job(processes: Processes, job: TrainingJob) -> TrainResult:
    """Build this rank's data loaders (a shard of the data per rank) and :func:`train`.

    The function :func:`defect_pipeline.ml.distributed.launch` runs on every process.
    """
    if job.cpu_threads is not None:
        torch.set_num_threads(job.cpu_threads)
    config = job.config
    if processes.world_size > 1:
        config = dataclasses.replace(config, device=str(processes.device))
    per_rank = math.ceil(len(job.train_set) / processes.world_size)
    train_loader = create_dataloader(job.train_set, batch_size=job.batch_size, shuffle=True,
                                     num_workers=job.num_workers, seed=config.seed, drop_last=per_rank > job.batch_size,
                                     sampler=processes.train_sampler(job.train_set, config.seed))
    val_loader = create_dataloader(job.val_set, batch_size=job.batch_size, shuffle=False, num_workers=job.num_workers,
                                   seed=config.seed, sampler=processes.eval_sampler(job.val_set))
    return train(job.model, job.loss_fn, train_loader, val_loader, metrics=job.metrics, config=config,
                 store=job.store, meta=job.meta, training_logger=job.training_logger if processes.is_main else None,
                 processes=processes)
