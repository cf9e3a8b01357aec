"""Nodes of the ``ensemble`` pipeline: tune each variant on validation, compare them on the test split.

Variants: every member alone, the ensemble (two or more members: weighted mean of probabilities)
and, with ``ensemble.tta``, the ensemble with test-time flips (or, with one member, that model
with flips). Each variant gets thresholds tuned on its own validation output; the test report
shows all of them side by side at fixed (0.5) and tuned thresholds, with their speed.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pandas as pd

from defect_pipeline.config import (
    DataParams,
    EnsembleParams,
    EvaluationParams,
    RuntimeParams,
    ThresholdsParams,
    TrainerParams,
)
from defect_pipeline.markdown import markdown_table
from defect_pipeline.ml.device import resolve_prediction_device
from defect_pipeline.ml.evaluation import evaluate_split, tune_thresholds
from defect_pipeline.ml.model_use import (
    apply_runtime,
    load_ensemble_members,
    load_member,
    member_name,
    predictor_from_ensemble_spec,
    split_dataset,
    variant_predictor,
)
from defect_pipeline.ml.predict import check_same_classes
from defect_pipeline.ml.threshold_checks import CheckRules
from defect_pipeline.tracking.pyfunc import load_logged_package

logger = logging.getLogger(__name__)

REPORTED = ("combined_score", "miou", "miou_defects", "macro_f1", "accuracy", "dice")


def _variants(names: list[str], tta: list[str]) -> dict[str, dict[str, Any]]:
    """Variant name → which members (indices) with which flips."""
    variants = {name: {"members": [i], "tta": []} for i, name in enumerate(names)}
    everyone = list(range(len(names)))
    if len(names) > 1:
        variants["ensemble"] = {"members": everyone, "tta": []}
    if tta:
        variants[("ensemble" if len(names) > 1 else names[0]) + " + TTA"] = {"members": everyone, "tta": list(tta)}
    return variants


def tune_ensemble(manifest: pd.DataFrame, raw_source: dict[str, Any], scan_summary: dict[str, Any],
                  ensemble: EnsembleParams, thresholds: ThresholdsParams, data: DataParams,
                  runtime: RuntimeParams, trainer: TrainerParams = TrainerParams()
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    """``ensemble.json`` (members, weights, each variant's tuned thresholds) and the tuning report (the members
    run where ``trainer.accelerator``/``trainer.precision`` say: ``report["device"]``)."""
    if not ensemble.members:
        raise ValueError("ensemble.members is empty: list two or more models (or one, for test-time flips), e.g. "
                         "in conf/local/parameters_evaluation.yml; see docs/evaluation.md")
    if len(ensemble.members) == 1 and not ensemble.tta:
        raise ValueError("one ensemble member and no ensemble.tta: nothing to combine; add members or flips")
    apply_runtime(runtime.cpu_threads)
    where = resolve_prediction_device(trainer.accelerator, trainer.precision)
    packages = [load_member(ref, load_logged=load_logged_package) for ref in ensemble.members]
    names = [member_name(i, p) for i, p in enumerate(packages)]
    raw_weights = ensemble.weights or [1.0] * len(packages)
    weights = [w / sum(raw_weights) for w in raw_weights]
    # mismatched classes are refused before any model is built or image read
    check_same_classes([(p.labels, p.meta["seg_mode"]) for p in packages], ensemble.members)
    dataset = split_dataset(packages[0], manifest, raw_source["raw_root"], defect_classes=scan_summary["classes"],
                            good_label=data.good_label, binarize_threshold=data.masks.binarize_threshold,
                            split=thresholds.split)
    variants = _variants(names, ensemble.tta)
    report: dict[str, Any] = {"split": thresholds.split, "samples": len(dataset), "variants": {},
                              "device": where.describe()}
    rules = CheckRules(signal_sigmas=thresholds.signal_sigmas, max_accuracy_drop=thresholds.max_accuracy_drop,
                       max_miou_drop=thresholds.max_miou_drop)
    for name, variant in variants.items():
        predictor = variant_predictor(packages, names, weights, variant, device=where.device, precision=where.precision)
        result = tune_thresholds(dataset, predictor,
                                 criterion=thresholds.criterion, target=thresholds.target,
                                 pixel_metric=thresholds.pixel_metric,
                                 min_area_candidates=thresholds.min_area_candidates, per_class=thresholds.per_class,
                                 rules=rules, batch_size=ensemble.batch_size, num_workers=ensemble.num_workers)
        status = result.report["status"]
        variant["thresholds"] = {**result.thresholds.to_dict(),
                                 "source": f"tuned on {thresholds.split} for ensemble variant '{name}'"
                                           + ("" if status == "tuned" else f" ({status})")}
        report["variants"][name] = {"thresholds": variant["thresholds"], **{
            k: v for k, v in result.report.items() if k in ("status", "checks", "image", "pixel", "min_area",
                                                            "per_class")}}
        logger.info("ensemble: thresholds of %s on %d %s images: %s", name, len(dataset), thresholds.split, status)
    spec = {
        "members": [{"ref": ref, "name": name, "backbone": p.meta.get("backbone"),
                     "image_size": p.meta.get("image_size"), "weights_sha256": p.weights_sha256,
                     "stage": p.meta.get("stage")}
                    for ref, name, p in zip(ensemble.members, names, packages)],
        "weights": weights, "tta": list(ensemble.tta), "classes": list(packages[0].labels.image_classes),
        "tuned_on": thresholds.split, "variants": variants, "final_variant": list(variants)[-1],
    }
    return spec, report


def evaluate_ensemble(spec: dict[str, Any], manifest: pd.DataFrame, raw_source: dict[str, Any],
                      scan_summary: dict[str, Any], ensemble: EnsembleParams, evaluation: EvaluationParams,
                      data: DataParams, runtime: RuntimeParams, trainer: TrainerParams = TrainerParams()
                      ) -> tuple[dict[str, Any], str, dict[str, dict[str, float]]]:
    """Each variant on the test split at fixed and tuned thresholds: summary, Markdown table, MLflow metrics
    (on the device of ``trainer.accelerator``/``trainer.precision``: ``summary["device"]``)."""
    apply_runtime(runtime.cpu_threads)
    where = resolve_prediction_device(trainer.accelerator, trainer.precision)
    rows, metrics = [], {}
    packages = load_ensemble_members(spec, load_logged=load_logged_package)  # once, for every variant
    dataset = split_dataset(packages[0], manifest, raw_source["raw_root"], defect_classes=scan_summary["classes"],
                            good_label=data.good_label, binarize_threshold=data.masks.binarize_threshold,
                            split=evaluation.split)
    for name, variant in spec["variants"].items():
        predictor = predictor_from_ensemble_spec(spec, variant=name, packages=packages, device=where.device,
                                                 precision=where.precision)
        started = time.perf_counter()
        result = evaluate_split(dataset, predictor, tuned=predictor.thresholds, worst_k=0,
                                batch_size=ensemble.batch_size, num_workers=ensemble.num_workers)
        seconds = time.perf_counter() - started
        fixed, tuned = result.summary["final_metrics_fixed"], result.summary["final_metrics_thresholded"]
        row = {"variant": name, "members": " + ".join(spec["members"][i]["name"] for i in variant["members"]),
               "tta": ",".join(variant["tta"]) or "none", "images_per_s": len(dataset) / max(seconds, 1e-9),
               **{f"fixed_{k}": fixed[k] for k in REPORTED}, **{f"tuned_{k}": tuned[k] for k in REPORTED}}
        rows.append(row)
        slug = name.replace(" + ", "_").replace(":", "_").replace(" ", "_")
        for key in ("images_per_s", *(f"{p}_{k}" for p in ("fixed", "tuned") for k in REPORTED)):
            metrics[f"{slug}.test_{key}"] = {"value": float(row[key]), "step": 0}
        logger.info("ensemble: %s on %d %s images: combined score %.4f fixed → %.4f tuned, %.1f images/s", name,
                    len(dataset), evaluation.split, fixed["combined_score"], tuned["combined_score"],
                    row["images_per_s"])
    summary = {"split": evaluation.split, "samples": len(dataset), "members": spec["members"],
               "weights": spec["weights"], "final_variant": spec["final_variant"], "variants": rows,
               "device": where.describe()}
    return summary, render_ensemble_markdown(summary), metrics


def render_ensemble_markdown(summary: dict[str, Any]) -> str:
    """The side-by-side table: each member, the ensemble, with and without TTA, fixed vs tuned."""
    def pct(value: float) -> str:
        return f"{100 * value:.1f} %"

    table = [[row["variant"], row["tta"], f"{row['images_per_s']:.1f}",
              *(f"{pct(row['fixed_' + k])} → {pct(row['tuned_' + k])}"
                for k in ("combined_score", "miou", "macro_f1"))]
             for row in summary["variants"]]
    members = [[m["name"], m["ref"], str(m["image_size"]), f"{w:.3f}", m["weights_sha256"][:12]]
               for m, w in zip(summary["members"], summary["weights"])]
    return "\n".join([
        f"# Ensemble evaluation ({summary['split']} split, {summary['samples']} images)", "",
        "Each variant's thresholds were tuned on its own validation output; cells read fixed (0.5) → tuned.", "",
        markdown_table(["variant", "TTA", "images/s", "combined score", "mIoU", "macro F1"], table), "",
        "Members:", "",
        markdown_table(["member", "reference", "input px", "weight", "weights sha256"], members), "",
        f"Inference with `inference.checkpoint: <this run's ensemble.json>` uses `{summary['final_variant']}`.", ""])
