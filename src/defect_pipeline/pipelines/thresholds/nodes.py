"""Node of the ``thresholds`` pipeline (the work is in :mod:`defect_pipeline.ml.evaluation`)."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from defect_pipeline.config import ThresholdsParams
from defect_pipeline.ml.evaluation import plot_threshold_curves, tune_thresholds
from defect_pipeline.ml.predict import ModelPackage, ModelStore, Predictor
from defect_pipeline.pipelines.model_use import apply_runtime, model_description, split_dataset

logger = logging.getLogger(__name__)


def tune(model: ModelStore, manifest: pd.DataFrame, raw_source: dict[str, Any], scan_summary: dict[str, Any],
         params: dict[str, Any], data: dict[str, Any], runtime: dict[str, Any]
         ) -> tuple[dict[str, Any], Figure, ModelPackage]:
    """``thresholds.json``, the threshold curves, and the model package with the tuned thresholds bundled."""
    cfg = ThresholdsParams.model_validate(params)
    apply_runtime(runtime)
    package = model.load()
    dataset = split_dataset(package, manifest, raw_source, scan_summary, data, cfg.split)
    result = tune_thresholds(dataset, Predictor(package), criterion=cfg.criterion, target=cfg.target,
                             pixel_metric=cfg.pixel_metric, min_area_candidates=cfg.min_area_candidates,
                             per_class=cfg.per_class, batch_size=cfg.batch_size, num_workers=cfg.num_workers)
    report = {**result.report, "model": model_description(package), "parameters": cfg.model_dump(mode="json")}
    t = result.thresholds
    logger.info("tuned thresholds on %d %s images: image %.3f, pixel %.3f, min area %d px%s", len(dataset),
                cfg.split, t.image, t.pixel, t.min_area, f", per class {t.per_class}" if t.per_class else "")
    tuned = ModelPackage(package.state_dict, dict(package.meta), result.thresholds)
    return report, plot_threshold_curves(result.report), tuned
