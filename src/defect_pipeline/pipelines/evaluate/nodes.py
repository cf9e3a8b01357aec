"""Node of the ``evaluate`` pipeline (the work is in :mod:`defect_pipeline.ml.evaluation`)."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from defect_pipeline.config import DataParams, EvaluationParams, RuntimeParams, TrainerParams
from defect_pipeline.ml.device import resolve_prediction_device
from defect_pipeline.ml.evaluation import evaluate_split
from defect_pipeline.ml.evaluation_report import (
    plot_confusion,
    plot_curves,
    plot_gallery,
    plot_per_class_metrics,
    plot_pixel_confusion,
    render_evaluation_markdown,
)
from defect_pipeline.ml.model_use import apply_runtime, model_description, split_dataset
from defect_pipeline.ml.package import ModelStore
from defect_pipeline.ml.predict import Predictor

logger = logging.getLogger(__name__)


def metric_items(summary: dict[str, Any]) -> dict[str, dict[str, float]]:
    """MLflow metrics: ``test_<metric>`` at the tuned thresholds, ``test_fixed_<metric>`` at 0.5."""
    out = {}
    for prefix, key in (("test_", "final_metrics_thresholded"), ("test_fixed_", "final_metrics_fixed")):
        for name, value in summary[key].items():
            if isinstance(value, float):
                out[f"{prefix}{name}"] = {"value": value, "step": 0}
    return out


def evaluate(model: ModelStore, manifest: pd.DataFrame, raw_source: dict[str, Any], scan_summary: dict[str, Any],
             params: EvaluationParams, data: DataParams, runtime: RuntimeParams,
             trainer: TrainerParams = TrainerParams()) -> dict[str, Any]:
    """``summary.json``, the Markdown report, MLflow metrics and the figures, by output name (the pipeline's
    :data:`~defect_pipeline.pipelines.evaluate.pipeline.OUTPUTS`); the model runs where ``trainer.accelerator``/
    ``trainer.precision`` say (``summary["device"]``)."""
    apply_runtime(runtime.cpu_threads)
    where = resolve_prediction_device(trainer.accelerator, trainer.precision)
    package = model.load()
    dataset = split_dataset(package, manifest, raw_source["raw_root"], defect_classes=scan_summary["classes"],
                            good_label=data.good_label, binarize_threshold=data.masks.binarize_threshold,
                            split=params.split)
    predictor = Predictor(package, device=where.device, precision=where.precision)
    result = evaluate_split(dataset, predictor, tuned=package.thresholds, worst_k=params.worst_k,
                            batch_size=params.batch_size, num_workers=params.num_workers)
    description = model_description(package)
    summary = {"model": description, **result.summary, "device": where.describe()}
    fixed, tuned = summary["final_metrics_fixed"], summary["final_metrics_thresholded"]
    logger.info("test (%d images): combined score %.4f fixed → %.4f tuned; mIoU %.4f → %.4f", summary["samples"],
                fixed["combined_score"], tuned["combined_score"], fixed["miou"], tuned["miou"])
    matrices = summary["confusion_matrices"]
    figures: dict[str, Figure] = {
        "confusion": plot_confusion(result.confusion, matrices["image"]["classes"]),
        "pixel_confusion": plot_pixel_confusion(result.pixel_confusion, matrices["pixel"]["classes"]),
        "per_class": plot_per_class_metrics(summary),
        "curves": plot_curves(result.curves),
        "gallery": plot_gallery(dataset, result.worst),
    }
    return {"summary": summary, "report": render_evaluation_markdown(summary, model=description),
            "metrics": metric_items(summary), **figures}
