"""Where a stage's training starts: what trains, and from which state (fresh, resumed, or finished).

:func:`build_trainables` puts model and loss on the device and builds the optimizer
(:func:`build_optimizer`: AdamW, backbone/head groups), the LR schedule over the stage's optimizer
steps and the grad scaler. :func:`load_last` reads the stage's ``last.pt`` (refused when written
for another architecture, class list or LoRA adapter); :func:`resume_state` loads it into the trainables and returns the
:class:`~defect_pipeline.ml.engine.state.TrainState` to continue from; :func:`already_finished`
is the result of a stage whose ``last.pt`` says it is over. ``last.pt`` may be a copy of a
``step_<N>.pt`` (``checkpoint_every_n_steps``): the stage then continues from step ``N``, as an
uninterrupted run would, and the step files written after ``N`` by the run it abandons are named in
the log (they are replaced as the run reaches their steps again).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch
from torch import nn

from defect_pipeline.ml.checkpoint import CheckpointError, CheckpointStore, check_compatible
from defect_pipeline.ml.engine.ema import WeightAverage
from defect_pipeline.ml.engine.interface import EngineConfig, TrainResult
from defect_pipeline.ml.engine.state import Trainables, TrainState
from defect_pipeline.ml.schedules import create_scheduler, lr_multiplier
from defect_pipeline.ml.speed import adamw_options, compile_with_fallback

logger = logging.getLogger(__name__)


def build_optimizer(model: nn.Module, loss_fn: nn.Module, *, lr: float, backbone_lr: float,
                    weight_decay: float, freeze_backbone: bool, device: str = "cpu") -> torch.optim.AdamW:
    """AdamW with backbone/head groups; no weight decay on norms and biases (1-D tensors); fused on CUDA."""
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
    return torch.optim.AdamW(param_groups, lr=lr, **adamw_options(device))


def build_trainables(model: nn.Module, loss_fn: nn.Module, config: EngineConfig, steps_per_epoch: int) -> Trainables:
    """Model and loss on the device (channels_last, compiled: :mod:`~defect_pipeline.ml.speed`), backbone frozen
    or not, optimizer, LR schedule, grad scaler and — with ``ema_decay`` — the weights' moving average (starting
    as a copy of the model)."""
    model.to(config.device, memory_format=torch.channels_last if config.channels_last else torch.preserve_format)
    loss_fn.to(config.device)
    model.freeze_backbone(config.freeze_backbone)
    logger.info("trainer.compile: %s", compile_with_fallback(model, enabled=config.compile))
    optimizer = build_optimizer(model, loss_fn, lr=config.lr, backbone_lr=config.backbone_lr,
                                weight_decay=config.weight_decay, freeze_backbone=config.freeze_backbone,
                                device=config.device)
    scheduler = create_scheduler(optimizer, **config.lr_schedule(steps_per_epoch))
    scaler = torch.amp.GradScaler(config.device.split(":")[0], enabled=config.precision == "fp16")
    ema = None if config.ema_decay is None else WeightAverage(model, decay=config.ema_decay,
                                                              warmup_steps=config.ema_warmup_steps)
    return Trainables(model, loss_fn, optimizer, scheduler, scaler, ema)


def resize_schedule(parts: Trainables, schedule: dict[str, Any], step: int) -> None:
    """Give the LR schedule the shape ``schedule`` (:meth:`EngineConfig.lr_schedule`'s keywords, e.g. a new
    ``total_steps``) from optimizer step ``step`` on: the next update already uses its learning rate."""
    multiplier = functools.partial(lr_multiplier, **schedule)
    scheduler = parts.scheduler
    scheduler.lr_lambdas = [multiplier] * len(parts.optimizer.param_groups)
    for group, base in zip(parts.optimizer.param_groups, scheduler.base_lrs, strict=True):
        group["lr"] = base * multiplier(step)
    scheduler._last_lr = [group["lr"] for group in parts.optimizer.param_groups]  # what get_last_lr() returns


def remove_stale_temp_files(store: CheckpointStore) -> None:
    """Delete (and name in the log) the temp files an interrupted checkpoint write left in ``store``."""
    stale = store.remove_stale_temp_files()
    if stale:
        logger.warning("removed %d temp file(s) an interrupted checkpoint write left in %s: %s", len(stale),
                       store.path, ", ".join(stale))


def load_last(store: CheckpointStore, meta: dict[str, Any]) -> dict[str, Any] | None:
    """``last.pt`` if there is one, refused when written for another architecture, class list or LoRA adapter."""
    if not store.has_last():
        return None
    checkpoint = store.load("last")
    model_meta = meta["model_meta"]
    check_compatible(checkpoint, backbone=model_meta["backbone"], decoder=model_meta["decoder"],
                     seg_mode=model_meta["seg_mode"], labels=meta["labels"], source=str(store.last_path))
    saved, asked = checkpoint["model_meta"].get("adapter"), model_meta.get("adapter")
    if saved != asked:  # the adapter keys of last.pt would not load into this network (or load into the wrong ones)
        stage = meta.get("stage", "stageN")
        raise CheckpointError(f"{store.last_path} was trained with {_adapter_text(saved)}, but {stage}.adapter asks "
                              f"for {_adapter_text(asked)}: set {stage}.adapter as it was to resume, or "
                              f"{stage}.resume: false to start the stage over")
    return checkpoint


def _adapter_text(adapter: dict[str, Any] | None) -> str:
    return "no adapter" if not adapter else (f"LoRA rank {adapter['rank']}, alpha {adapter['alpha']:g}, dropout "
                                            f"{adapter['dropout']:g} on {adapter['target_modules']}")


def already_finished(checkpoint: dict[str, Any], meta: dict[str, Any], monitor: str,
                     store: CheckpointStore) -> TrainResult:
    """The result of a stage whose ``last.pt`` is finished: its history, nothing trained."""
    logger.warning("stage %s already finished (%d epochs, best %s = %s); nothing to do. Delete %s "
                   "or set resume: false to train again.", meta.get("stage"), checkpoint["epoch"], monitor,
                   checkpoint.get("best_metric"), store.path)
    return TrainResult(list(checkpoint["history"]), checkpoint.get("best_metric"), checkpoint.get("best_epoch"),
                       checkpoint["epoch"], checkpoint["global_step"], checkpoint["total_steps"],
                       bool(checkpoint.get("stopped_early")), already_finished=True,
                       summary=dict(checkpoint.get("summary", {})), steps=list(checkpoint.get("steps", [])),
                       best_step=checkpoint.get("best_step"),
                       budget_estimates=list(checkpoint.get("budget_estimates", [])))


def resume_state(checkpoint: dict[str, Any], parts: Trainables, meta: dict[str, Any], store: CheckpointStore,
                 config: EngineConfig) -> TrainState:
    """Load ``checkpoint`` (the stage's ``last.pt``) into ``parts``; the state to continue from."""
    state = TrainState.from_checkpoint(checkpoint, parts)
    partial = state.partial
    logger.info("resuming stage %s from %s (step %d: epoch %d%s; the stage is %s)", meta.get("stage"),
                store.last_path, state.global_step, state.epoch,
                f", then {partial.batches_done} batches of epoch {partial.epoch}" if partial else "",
                f"{config.max_steps} steps" if config.max_steps is not None else f"{config.epochs} epochs"
                if config.epochs is not None else f"as long as its time budget, {config.time_budget_s:.0f} s")
    later = [path.name for step, path in store.step_files() if step > state.global_step]
    if later:
        logger.warning("%s holds step %d, but %s come from a run that went past it: this run continues from step "
                       "%d and replaces them as it reaches their steps (best.pt too, if it is from after step %d "
                       "and this run improves on the best it had then)", store.last_path, state.global_step,
                       ", ".join(later), state.global_step, state.global_step)
    return state
