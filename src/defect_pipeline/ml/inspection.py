"""What is in a checkpoint folder, and in one checkpoint, without training code or guesswork.

:func:`inventory` lists every checkpoint file under a folder (``*.pt``, ``*.pth``,
``*.safetensors``): size, stage, epoch, global step of total steps and % complete, for the
``last`` checkpoint of an unfinished stage the time it still needs (:func:`remaining_time`, from the epoch
times in the checkpoint's history), peak GPU memory per device where recorded (:func:`peak_gpu_memory`),
monitored metric and its best value, and which files are a stage's ``best`` / ``last`` / ``step`` (the
numbered ``step_<N>.pt`` of ``checkpoint_every_n_steps``, listed after them in step order). A file that cannot be read
(corrupt, foreign, or a pickle that would run code — everything is read with
``weights_only=True``) is listed with its error instead of stopping the listing.

:func:`describe` details one checkpoint: architecture and parameters per component (total /
trainable / frozen, as the stage trained them), loss setup and weights or learned task
uncertainties, optimizer parameter groups with their current learning rates, where the dropout
schedule stands, data-manifest hash, classes, and how its configuration differs from the
current parameters.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from defect_pipeline.ml.checkpoint import STEP_FILE, CheckpointError, read_weights_file
from defect_pipeline.ml.schedules import dropout_at_step
from defect_pipeline.util import flatten

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".safetensors")


def _read(path: Path) -> tuple[dict[str, Any], str]:
    """(checkpoint dict, kind) of a training checkpoint or a package's weights (+ its model.json)."""
    state = read_weights_file(path)
    if path.suffix == ".safetensors":
        meta_file = path.with_name("model.json")
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        if not meta:
            raise CheckpointError(f"{path}: safetensors weights without a model.json beside them (not a model "
                                  "package of this project)")
        return {"model": state, "model_meta": meta, "labels": meta.get("labels"), "stage": meta.get("stage"),
                "epoch": meta.get("epoch"), "global_step": meta.get("global_step"), "monitor": meta.get("monitor"),
                "best_metric": meta.get("best_metric"), "manifest_hash": meta.get("manifest_hash"),
                "config": {"model": {"decoder_channels": meta.get("decoder_channels")}}}, "package"
    if not isinstance(state, dict) or "model_meta" not in state or "model" not in state:
        raise CheckpointError(f"{path}: not a checkpoint of this project (no model_meta / model): a foreign file")
    return state, str(state.get("kind", "checkpoint"))


def _listing_order(path: Path) -> tuple:
    """Folder by folder; in each, ``step_<N>.pt`` after the other files, by ``N`` (``step_900`` before ``step_1000``)."""
    step = STEP_FILE.match(path.name)
    return (path.parent.as_posix(), (1, int(step.group(1)), "") if step else (0, 0, path.name))


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def format_duration(seconds: float) -> str:
    """``45 s``, ``12 min 05 s``, ``3 h 04 min``, ``2 d 03 h``."""
    seconds = max(0, round(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours:02d} h"
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def remaining_time(history: list[dict[str, Any]] | None, *, global_step: int | None, total_steps: int | None,
                   finished: bool | None) -> dict[str, Any] | None:
    """How long an unfinished stage still needs (None when it finished or its length is not recorded).

    From the logged times in the checkpoint's history: each row's ``epoch_seconds`` (training and
    validation of the epoch — or, with ``val_every_n_steps``, of the steps since the previous
    validation) over its optimizer steps (the row's ``global_step`` minus the previous row's) gives
    the mean time per step; ``eta_s`` = (``total_steps`` − ``global_step``) × that time, i.e. the
    remaining epochs × the mean epoch time, and a checkpoint written mid-epoch counts only the part
    it still lacks. Early stopping or a time budget may end the stage sooner. Before the first row
    the ETA is unknown.
    """
    if finished or global_step is None or not total_steps:
        return None
    remaining_steps = max(int(total_steps) - int(global_step), 0)
    steps = seconds = 0.0
    previous = 0
    for row in history or []:
        step, spent = _number(row.get("global_step")), _number(row.get("epoch_seconds"))
        if step is None or spent is None:
            continue
        if step > previous:
            steps, seconds = steps + step - previous, seconds + spent
        previous = int(step)
    if steps <= 0:
        return {"remaining_steps": remaining_steps, "seconds_per_step": None, "eta_s": None,
                "eta": "unknown (nothing logged yet)"}
    per_step = seconds / steps
    eta = remaining_steps * per_step
    return {"remaining_steps": remaining_steps, "seconds_per_step": round(per_step, 4), "eta_s": round(eta, 1),
            "eta": format_duration(eta)}


def peak_gpu_memory(history: list[dict[str, Any]] | None, trainer: dict[str, Any] | None = None) -> dict[str, float]:
    """The largest peak GPU memory (MiB) over the history's epochs, per device, where it was recorded (CUDA).

    ``peak_gpu_mem_mb`` is the training process's device (rank 0's with several processes: the others
    are not recorded); a column ``peak_gpu_mem_mb/<device>`` counts as that device. Empty on CPU.
    """
    peaks: dict[str, float] = {}
    world = int((trainer or {}).get("world_size") or 1)
    main = "cuda:0" if world == 1 else f"cuda:0 (rank 0 of {world})"
    for row in history or []:
        for key, value in row.items():
            if key != "peak_gpu_mem_mb" and not key.startswith("peak_gpu_mem_mb/"):
                continue
            number = _number(value)
            if number is not None:
                device = main if key == "peak_gpu_mem_mb" else key.split("/", 1)[1]
                peaks[device] = round(max(peaks.get(device, 0.0), number), 1)
    return peaks


def _remaining(state: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """The time a stage still needs, told by its ``last`` checkpoint (where it resumes); a ``best`` or a
    package is a snapshot of an earlier epoch, not where the stage stands."""
    if kind != "last":
        return None
    return remaining_time(state.get("history"), global_step=state.get("global_step"),
                          total_steps=state.get("total_steps"), finished=state.get("finished"))


def _describe_gpu(peaks: dict[str, float]) -> str:
    return ", ".join(f"{device}: {mb:.0f} MiB" for device, mb in peaks.items())


def inventory(folder: str | Path) -> list[dict[str, Any]]:
    """One row per checkpoint file under ``folder`` (see the module docstring)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"inspect.path {folder} is not a folder of checkpoints (e.g. data/06_models)")
    rows = []
    for path in sorted((p for p in folder.rglob("*") if p.suffix in CHECKPOINT_SUFFIXES and p.is_file()
                        and not p.name.startswith(".")), key=_listing_order):
        row: dict[str, Any] = {"file": path.relative_to(folder).as_posix(), "size_mb": round(path.stat().st_size / 2**20, 2)}
        try:
            state, kind = _read(path)
        except Exception as error:  # noqa: BLE001 - a bad file is a row with its error, not a crash
            row.update(kind="unreadable", error=str(error).splitlines()[0][:300])
            rows.append(row)
            continue
        total, step = state.get("total_steps"), state.get("global_step")
        remaining = _remaining(state, kind)
        row.update({
            "kind": kind, "stage": state.get("stage"), "backbone": state["model_meta"].get("backbone"),
            "epoch": state.get("epoch"), "global_step": step, "total_steps": total,
            "percent_complete": round(100.0 * step / total, 1) if step is not None and total else None,
            "finished": state.get("finished"), "eta": remaining["eta"] if remaining else "",
            "eta_s": remaining["eta_s"] if remaining else None,
            "peak_gpu_mem": _describe_gpu(peak_gpu_memory(state.get("history"), state.get("trainer"))),
            "monitor": state.get("monitor"), "best_metric": state.get("best_metric"),
            "best_epoch": state.get("best_epoch"), "manifest_hash": state.get("manifest_hash"), "error": "",
        })
        rows.append(row)
    return rows


def _component_counts(state: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Parameters per top-level component of the rebuilt network, trainable as the stage trained it."""
    from defect_pipeline.ml.models.adapters import LoraSpec, add_lora, is_adapter_parameter
    from defect_pipeline.ml.package import ModelPackage

    adapter = state["model_meta"].get("adapter")
    if adapter:  # as it trained: the backbone frozen, its LoRA adapters (unless the stage froze them) training
        net = ModelPackage(state["model"], {**state["model_meta"], "labels": state["labels"], "decoder_channels": int(
            state.get("config", {}).get("model", {}).get("decoder_channels", 64))}).new_network()
        add_lora(net, LoraSpec.from_dict(adapter))
        net.load_state_dict(state["model"])
    else:
        net = ModelPackage.from_checkpoint(state, source="inspection").build_model()
    frozen_backbone = bool(state.get("config", {}).get("stage", {}).get("freeze_backbone", False))
    net.freeze_backbone(frozen_backbone)
    counts = {}
    for name, module in net.named_children():
        params = list(module.parameters())
        total = sum(p.numel() for p in params)
        trainable = sum(p.numel() for p in params if p.requires_grad)
        counts[name] = {"total": total, "trainable": trainable, "frozen": total - trainable}
    counts["all"] = {key: sum(c[key] for c in counts.values()) for key in ("total", "trainable", "frozen")}
    if adapter:
        lora = [p for name, p in net.named_parameters() if is_adapter_parameter(name)]
        total = sum(p.numel() for p in lora)
        trainable = sum(p.numel() for p in lora if p.requires_grad)
        counts["lora adapters (in encoder)"] = {"total": total, "trainable": trainable, "frozen": total - trainable}
    return counts


def describe(path: str | Path, current: dict[str, Any] | None = None) -> dict[str, Any]:
    """The details of one checkpoint (see the module docstring); ``current``: the current parameters."""
    path = Path(path)
    state, kind = _read(path)
    meta = state["model_meta"]
    config = state.get("config", {})
    stage_cfg = config.get("stage", {})
    loss_state = {k: float(v) for k, v in (state.get("loss") or {}).items() if torch.is_tensor(v) and v.numel() == 1}
    uncertainties = {k.removeprefix("log_var_"): {"log_var": v, "sigma2": math.exp(v), "weight": math.exp(-v)}
                     for k, v in loss_state.items() if k.startswith("log_var_")}
    groups = []
    for group in (state.get("optimizer") or {}).get("param_groups", []):
        groups.append({"name": group.get("name"), "lr": group.get("lr"), "initial_lr": group.get("initial_lr"),
                       "weight_decay": group.get("weight_decay"), "parameters": len(group.get("params", []))})
    dropout_cfg = stage_cfg.get("dropout", {})
    step = state.get("global_step")
    dropout = None
    if dropout_cfg and step is not None:
        warmup = int(dropout_cfg.get("warmup_step", 0))
        dropout = {"rate": dropout_cfg.get("rate"), "warmup_step": warmup, "global_step": step,
                   "current": dropout_at_step(step, target=float(dropout_cfg.get("rate", 0.0)), warmup_step=warmup),
                   "switched_on": step >= warmup}
    total = state.get("total_steps")
    report = {
        "file": str(path), "kind": kind, "size_mb": round(path.stat().st_size / 2**20, 2),
        "stage": state.get("stage"), "epoch": state.get("epoch"), "global_step": step, "total_steps": total,
        "percent_complete": round(100.0 * step / total, 1) if step is not None and total else None,
        "finished": state.get("finished"), "monitor": state.get("monitor"), "best_metric": state.get("best_metric"),
        "best_epoch": state.get("best_epoch"), "init_from": state.get("init_from"),
        "architecture": {**meta, "decoder_channels": config.get("model", {}).get("decoder_channels")},
        "classes": state.get("labels"), "manifest_hash": state.get("manifest_hash"),
        "parameters": _component_counts(state),
        "loss": {"config": stage_cfg.get("loss"), "state": loss_state, "task_uncertainties": uncertainties},
        "optimizer": {"type": "AdamW" if groups else None, "param_groups": groups},
        "dropout": dropout, "history_epochs": len(state.get("history") or []),
        "remaining": _remaining(state, kind),
        "peak_gpu_mem_mb": peak_gpu_memory(state.get("history"), state.get("trainer")),
        "config_differences": config_differences(state, current) if current else [],
    }
    return report


def config_differences(state: dict[str, Any], current: dict[str, Any]) -> list[dict[str, Any]]:
    """Keys whose value in the checkpoint's configuration differs from the current parameters."""
    config = state.get("config", {})
    stage = state.get("stage")
    pairs = [("model", config.get("model"), current.get("model")),
             ("augmentation", config.get("augmentation"), current.get("augmentation")),
             (str(stage), config.get("stage"), current.get(str(stage)) if stage else None)]
    differences = []
    for block, saved, now in pairs:
        if not isinstance(saved, dict) or not isinstance(now, dict):
            continue
        saved_flat, now_flat = flatten(saved), flatten(now)
        for key in sorted(set(now_flat) & set(saved_flat)):
            if saved_flat[key] != now_flat[key]:
                differences.append({"key": f"{block}.{key}", "checkpoint": saved_flat[key], "current": now_flat[key]})
    return differences


def render_markdown(rows: list[dict[str, Any]], details: dict[str, Any] | None, *, folder: str) -> str:
    from defect_pipeline.markdown import markdown_table

    def fmt(value: Any) -> str:
        if value is None or value == "":
            return "–"
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = [f"# Checkpoints in `{folder}`", ""]
    columns = ["file", "kind", "size_mb", "stage", "backbone", "epoch", "global_step", "total_steps",
               "percent_complete", "eta", "peak_gpu_mem", "monitor", "best_metric", "error"]
    lines.append(markdown_table(columns, [[fmt(row.get(c)) for c in columns] for row in rows]) if rows
                 else "No checkpoint files.")
    if details:
        arch = details["architecture"]
        lines += ["", f"## {details['file']}", "",
                  f"- {details['kind']} of {details['stage']}, epoch {details['epoch']}, step {details['global_step']} "
                  f"of {details['total_steps']} ({fmt(details['percent_complete'])} %), finished: {details['finished']}; "
                  f"{details['monitor']} best {fmt(details['best_metric'])} at epoch {details['best_epoch']}",
                  f"- architecture: {arch.get('backbone')} + {arch.get('decoder')} (width {arch.get('decoder_channels')}), "
                  f"{arch.get('seg_mode')} segmentation at {arch.get('image_size')} px",
                  f"- classes: {details['classes']}; data-manifest hash `{details['manifest_hash']}`",
                  *([f"- LoRA adapters: rank {a['rank']}, alpha {a['alpha']:g} (scale {a['alpha'] / a['rank']:g}), "
                     f"dropout {a['dropout']:g}, on {', '.join(a['target_modules'])}"]
                    if (a := arch.get("adapter")) else []),
                  f"- initialised from: {details['init_from']}"]
        remaining = details.get("remaining")
        if remaining:
            lines.append(f"- unfinished: {remaining['remaining_steps']} optimizer steps left"
                         + (f" at {remaining['seconds_per_step']:.3g} s per step (the history's mean)"
                            if remaining["seconds_per_step"] is not None else "") + f", ETA {remaining['eta']}")
        if details.get("peak_gpu_mem_mb"):
            lines.append(f"- peak GPU memory: {_describe_gpu(details['peak_gpu_mem_mb'])}")
        lines += ["", "Parameters:", ""]
        lines.append(markdown_table(["component", "total", "trainable", "frozen"],
                                    [[name, f"{c['total']:,}", f"{c['trainable']:,}", f"{c['frozen']:,}"]
                                     for name, c in details["parameters"].items()]))
        loss = details["loss"]
        lines += ["", f"Loss: {loss['config']}"]
        for task, u in loss["task_uncertainties"].items():
            lines.append(f"- learned uncertainty of {task}: σ² = {u['sigma2']:.4g} (weight {u['weight']:.4g})")
        if details["optimizer"]["param_groups"]:
            lines += ["", "Optimizer parameter groups:", ""]
            lines.append(markdown_table(["group", "lr now", "initial lr", "weight decay", "tensors"],
                                        [[g["name"], fmt(g["lr"]), fmt(g["initial_lr"]), fmt(g["weight_decay"]),
                                          g["parameters"]] for g in details["optimizer"]["param_groups"]]))
        if details["dropout"]:
            d = details["dropout"]
            lines += ["", f"Dropout: rate {d['rate']} from step {d['warmup_step']}; at step {d['global_step']} it is "
                          f"{d['current']} ({'on' if d['switched_on'] else 'not yet on'})."]
        lines += ["", "Configuration differences from the current parameters:", ""]
        lines.append(markdown_table(["key", "checkpoint", "current"],
                                    [[d["key"], fmt(d["checkpoint"]), fmt(d["current"])]
                                     for d in details["config_differences"]])
                     if details["config_differences"] else "None.")
    return "\n".join(lines) + "\n"
