"""Nodes of ``compare_backbones``: one candidate per namespaced slot, then the comparison table.

Each slot trains one backbone with the training stage itself — the same assembly as the
``stage1``-``stage3`` nodes (:func:`defect_pipeline.ml.stage.build_training_job` and
:func:`~defect_pipeline.ml.stage.run_stage`), not a copy — with ``model.backbone`` set to the
slot's backbone and the comparison's stage block. A candidate that cannot run (its training state
alone would not fit in the free memory, an out-of-memory error, any other failure) is reported
with its reason instead of stopping the others, and says so in its
:class:`~defect_pipeline.tracking.outcome.NodeOutcome` (its MLflow child run ends FAILED).
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

import pandas as pd
import torch

from defect_pipeline.config import (
    AugmentationParams,
    CompareBackbonesParams,
    DataParams,
    DiagnosisParams,
    ModelParams,
    RuntimeParams,
    TrainerParams,
)
from defect_pipeline.markdown import markdown_table
from defect_pipeline.ml.checkpoint import CheckpointStore
from defect_pipeline.ml.dataset import labels_from_manifest
from defect_pipeline.ml.distributed import free_memory_bytes, resolve_trainer
from defect_pipeline.ml.models import training_memory_estimate
from defect_pipeline.ml.stage import build_training_job, rerun_target, resolve_model_auto, run_stage
from defect_pipeline.tracking.outcome import NodeOutcome
from defect_pipeline.tracking.runs import MlflowTrainingLogger, log_stage_result

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
        # how the candidate was set up, for the sections that report the comparison
        "initial_weights": summary["initial_weights"]["description"], "cpu_threads": summary.get("cpu_threads"),
    }


def train_candidate(manifest: pd.DataFrame, raw_source: dict[str, Any], scan_summary: dict[str, Any],
                    checkpoint_dir: CheckpointStore, model: ModelParams, augmentation: AugmentationParams,
                    data: DataParams, runtime: RuntimeParams, diagnosis: DiagnosisParams, trainer: TrainerParams,
                    compare: CompareBackbonesParams, *, slot: int) -> tuple[dict[str, Any], NodeOutcome]:
    """Train the ``slot``-th backbone (1-based) of ``compare_backbones.backbones``: its result row and outcome."""
    if slot > len(compare.backbones):
        return {"slot": slot, "status": "unused"}, NodeOutcome()
    backbone = compare.backbones[slot - 1]
    candidate = model.model_copy(update={"backbone": backbone})
    base = {"slot": slot, "backbone": backbone}
    labels = labels_from_manifest(manifest, defect_classes=list(scan_summary["classes"]), good_label=data.good_label)
    settings = resolve_trainer(**trainer.model_dump())
    try:
        sized, _ = resolve_model_auto(manifest, candidate, settings=settings, good_label=data.good_label)
        too_big = _memory_check(backbone, sized, labels, settings.accelerator, compare.memory_fraction)
    except Exception as error:  # noqa: BLE001 - an unknown backbone is this candidate's failure only
        return _not_compared(base, "failed", f"{type(error).__name__}: {error}")
    if too_big:
        logger.warning("compare_backbones: %s", too_big)
        return _not_compared(base, "skipped_memory", too_big)
    logger.info("compare_backbones: training %s (%d of %d)", backbone, slot, len(compare.backbones))
    try:
        plan = build_training_job(manifest, raw_root=raw_source["raw_root"], defect_classes=scan_summary["classes"],
                                  checkpoints=checkpoint_dir, model=candidate, stage=compare.stage,
                                  augmentation=augmentation, data=data, runtime=runtime, trainer=trainer,
                                  stage_name=f"compare:{backbone}", training_logger=MlflowTrainingLogger(
                                      rows_by_step=compare.stage.val_every_n_steps is not None,
                                      artifact_path="comparison"))
        rerun = rerun_target(plan, pipeline="compare_backbones", stage_key="compare_backbones.stage",
                             all_pipeline="compare_backbones", all_stage_keys=("compare_backbones.stage",))
        result = run_stage(plan, diagnosis, rerun=rerun)
        log_stage_result(result.summary)
    except (MemoryError, torch.OutOfMemoryError) as error:
        return _not_compared(base, "failed_memory", f"{type(error).__name__}: {str(error)[:300]}")
    except Exception as error:  # noqa: BLE001 - one failure must not sink the other candidates
        logger.error("compare_backbones: %s failed:\n%s", backbone, traceback.format_exc())
        return _not_compared(base, "failed", f"{type(error).__name__}: {str(error)[:300]}")
    row = {**base, "status": "ok", "decoder": result.summary["decoder"], **_result(result.history, result.summary)}
    return row, NodeOutcome()


def _not_compared(base: dict[str, Any], status: str, error: str) -> tuple[dict[str, Any], NodeOutcome]:
    """The row of a candidate that was skipped or failed, and the matching outcome for its MLflow run."""
    verdict = "skipped" if status.startswith("skipped") else "failed"
    return {**base, "status": status, "error": error}, NodeOutcome(verdict, error, reason=status)


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
