"""Nodes of ``compare_backbones``: one candidate per namespaced slot, then the comparison table.

Each slot runs :func:`defect_pipeline.pipelines.training.nodes.train_stage` — the training stage
itself, not a copy — with ``model.backbone`` set to the slot's backbone and the comparison's
stage block. A candidate that cannot run (its training state alone would not fit in the free
memory, an out-of-memory error, any other failure) is reported with its reason instead of
stopping the others.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

import pandas as pd
import torch

from defect_pipeline.config import CompareBackbonesParams, DataParams, ModelParams, TrainerParams
from defect_pipeline.markdown import markdown_table
from defect_pipeline.ml.checkpoint import CheckpointStore
from defect_pipeline.ml.dataset import labels_from_manifest
from defect_pipeline.ml.distributed import free_memory_bytes, resolve_trainer
from defect_pipeline.ml.model import training_memory_estimate
from defect_pipeline.pipelines.training.nodes import train_stage

logger = logging.getLogger(__name__)


def _memory_check(backbone: str, model: ModelParams, labels: Any, device: str, fraction: float) -> str | None:
    estimate = training_memory_estimate(backbone, num_image_classes=labels.num_image_classes,
                                        num_seg_classes=labels.num_seg_classes, decoder=model.decoder,
                                        decoder_channels=model.decoder_channels, image_size=model.image_size,
                                        seg_mode=model.seg_mode)
    free = free_memory_bytes(device)
    if free is not None and estimate["state_bytes"] > fraction * free:
        return (f"{backbone} has {estimate['parameters'] / 1e6:.0f} M parameters: its weights, gradients and AdamW "
                f"state alone need {estimate['state_bytes'] / 2**30:.1f} GiB, more than {fraction:.0%} of the "
                f"{free / 2**30:.1f} GiB free on {device}; skipped (use a larger machine or a smaller backbone)")
    return None


def _result(history: pd.DataFrame, summary: dict[str, Any]) -> dict[str, Any]:
    mean = lambda column: float(history[column].mean()) if column in history.columns else None  # noqa: E731
    peak = lambda column: float(history[column].max()) if column in history.columns else None  # noqa: E731
    return {
        "parameters_m": summary["parameters"]["total"] / 1e6,
        "trainable_m": summary["parameters"]["trainable"] / 1e6,
        **{f"best_{k}": v for k, v in summary["best_values"].items()},
        "epochs_run": summary["epochs_run"], "stop_reason": summary.get("stop_reason"),
        "train_samples_per_s": mean("train_samples_per_s"), "val_samples_per_s": mean("val_samples_per_s"),
        "epoch_seconds": mean("epoch_seconds"),
        "training_seconds": float(history["epoch_seconds"].sum()) if "epoch_seconds" in history else None,
        "peak_rss_mb": peak("peak_rss_mb"), "peak_gpu_mem_mb": peak("peak_gpu_mem_mb"),
        "diagnosis": summary.get("diagnosis", []),
    }


def train_candidate(manifest: pd.DataFrame, raw_source: dict[str, Any], scan_summary: dict[str, Any],
                    checkpoint_dir: CheckpointStore, model: dict[str, Any], augmentation: dict[str, Any],
                    data: dict[str, Any], runtime: dict[str, Any], diagnosis: dict[str, Any],
                    trainer: dict[str, Any], compare: dict[str, Any], *, slot: int) -> dict[str, Any]:
    """Train the ``slot``-th backbone (1-based) of ``compare_backbones.backbones``; its result row."""
    cfg = CompareBackbonesParams.model_validate(compare)
    if slot > len(cfg.backbones):
        return {"slot": slot, "status": "unused"}
    backbone = cfg.backbones[slot - 1]
    model_cfg = ModelParams.model_validate({**model, "backbone": backbone})
    base = {"slot": slot, "backbone": backbone}
    data_cfg = DataParams.model_validate(data)
    labels = labels_from_manifest(manifest, defect_classes=list(scan_summary["classes"]), good_label=data_cfg.good_label)
    device = resolve_trainer(**TrainerParams.model_validate(trainer).model_dump()).accelerator
    try:
        too_big = _memory_check(backbone, model_cfg, labels, device, cfg.memory_fraction)
    except Exception as error:  # noqa: BLE001 - an unknown backbone is this candidate's failure only
        return {**base, "status": "failed", "error": f"{type(error).__name__}: {error}"}
    if too_big:
        logger.warning("compare_backbones: %s", too_big)
        return {**base, "status": "skipped_memory", "error": too_big}
    logger.info("compare_backbones: training %s (%d of %d)", backbone, slot, len(cfg.backbones))
    try:
        _, history, summary, *_ = train_stage(
            manifest, raw_source, scan_summary, checkpoint_dir, model_cfg.model_dump(mode="json"), augmentation,
            data, runtime, diagnosis, trainer, cfg.stage.model_dump(mode="json"), stage_name=f"compare:{backbone}")
    except (MemoryError, torch.OutOfMemoryError) as error:
        return {**base, "status": "failed_memory", "error": f"{type(error).__name__}: {str(error)[:300]}"}
    except Exception as error:  # noqa: BLE001 - one failure must not sink the other candidates
        logger.error("compare_backbones: %s failed:\n%s", backbone, traceback.format_exc())
        return {**base, "status": "failed", "error": f"{type(error).__name__}: {str(error)[:300]}"}
    return {**base, "status": "ok", "decoder": summary["decoder"], **_result(history, summary)}


RECOMMENDATIONS = (
    ("lowest validation loss", "best_val_loss", "min"),
    ("best validation combined score", "best_val_combined_score", "max"),
    ("fastest training (samples/s)", "train_samples_per_s", "max"),
    ("best score per training second", "score_per_second", "max"),
)


def compare(*results: dict[str, Any]) -> tuple[pd.DataFrame, str]:
    """The comparison table (one row per backbone) and a Markdown report with the recommendations."""
    rows = [r for r in results if r.get("status") != "unused"]
    table = pd.DataFrame(rows)
    if "best_val_combined_score" in table.columns and "training_seconds" in table.columns:
        table["score_per_second"] = table["best_val_combined_score"] / table["training_seconds"]
    picks = []
    ok = table[table["status"] == "ok"] if "status" in table.columns else table
    for label, column, direction in RECOMMENDATIONS:
        if column in ok.columns and ok[column].notna().any():
            index = ok[column].idxmin() if direction == "min" else ok[column].idxmax()
            picks.append([label, ok.loc[index, "backbone"], f"{ok.loc[index, column]:.4g}"])
    shown = [c for c in ("backbone", "status", "decoder", "parameters_m", "trainable_m", "best_val_loss",
                         "best_val_combined_score", "best_val_miou", "best_val_macro_f1", "train_samples_per_s",
                         "val_samples_per_s", "epoch_seconds", "epochs_run", "peak_rss_mb", "peak_gpu_mem_mb")
             if c in table.columns]

    def fmt(value: Any) -> str:
        return "–" if value is None or (isinstance(value, float) and pd.isna(value)) else (
            f"{value:.4g}" if isinstance(value, float) else str(value))

    lines = ["# Backbone comparison", "", "Equal budget: the same `compare_backbones.stage` recipe for every backbone.",
             "", markdown_table(shown, [[fmt(row.get(c)) for c in shown] for row in table.to_dict("records")]), "",
             "## Recommendations", ""]
    lines.append(markdown_table(["criterion", "backbone", "value"], picks) if picks else
                 "No backbone finished: see the errors below.")
    problems = [r for r in rows if r.get("status") != "ok"]
    if problems:
        lines += ["", "## Not compared", ""] + [f"- **{r['backbone']}** ({r['status']}): {r.get('error')}"
                                                for r in problems]
    return table, "\n".join(lines) + "\n"
