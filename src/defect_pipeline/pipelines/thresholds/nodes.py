"""Nodes of the ``thresholds`` pipeline: choose the stage's model, tune its thresholds (the work is in
:mod:`defect_pipeline.ml.model_use` and :mod:`defect_pipeline.ml.evaluation`)."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from defect_pipeline.config import STAGES, DataParams, RuntimeParams, ThresholdsParams, TrainerParams
from defect_pipeline.ml.device import resolve_prediction_device
from defect_pipeline.ml.evaluation import plot_threshold_curves, tune_thresholds
from defect_pipeline.ml.model_use import apply_runtime, model_description, select_stage_model, split_dataset
from defect_pipeline.ml.package import ModelPackage, ModelStore
from defect_pipeline.ml.predict import Predictor
from defect_pipeline.ml.threshold_checks import CheckRules
from defect_pipeline.tracking.outcome import NodeOutcome
from defect_pipeline.tracking.runs import THRESHOLDS_STATUS_TAG

logger = logging.getLogger(__name__)


def select_model(params: ThresholdsParams, *stage_models: ModelStore) -> ModelStore:
    """The model of ``thresholds.model_stage`` (``stage_models``: every stage's, in the order of ``STAGES``)."""
    stores = dict(zip(STAGES, stage_models, strict=True))
    stage, reason = select_stage_model(stores, params.model_stage)
    logger.info("thresholds, evaluate, export and inference use %s's model (%s): %s", stage, stores[stage].path,
                reason)
    return stores[stage]


def check_rules(params: ThresholdsParams) -> CheckRules:
    """The ``thresholds.*`` settings that decide when a tuned operating point is used."""
    return CheckRules(signal_sigmas=params.signal_sigmas, max_accuracy_drop=params.max_accuracy_drop,
                      max_miou_drop=params.max_miou_drop)


def tune(model: ModelStore, manifest: pd.DataFrame, raw_source: dict[str, Any], scan_summary: dict[str, Any],
         params: ThresholdsParams, data: DataParams, runtime: RuntimeParams, trainer: TrainerParams = TrainerParams()
         ) -> tuple[dict[str, Any], Figure, ModelPackage, NodeOutcome]:
    """``thresholds.json``, the threshold curves, the model package with the thresholds (and the test-time
    flips ``thresholds.tta`` they were tuned with) bundled, and the
    outcome that tags the MLflow run with the thresholds' status (tuned, or which part was kept fixed and why).
    The model runs where ``trainer.accelerator``/``trainer.precision`` say (recorded under ``device``)."""
    apply_runtime(runtime.cpu_threads)
    where = resolve_prediction_device(trainer.accelerator, trainer.precision)
    package = model.load()
    dataset = split_dataset(package, manifest, raw_source["raw_root"], defect_classes=scan_summary["classes"],
                            good_label=data.good_label, binarize_threshold=data.masks.binarize_threshold,
                            split=params.split)
    predictor = Predictor(package, device=where.device, precision=where.precision, tta=params.tta)
    result = tune_thresholds(dataset, predictor, criterion=params.criterion, target=params.target,
                             pixel_metric=params.pixel_metric, min_area_candidates=params.min_area_candidates,
                             per_class=params.per_class, rules=check_rules(params), batch_size=params.batch_size,
                             num_workers=params.num_workers)
    report = {**result.report, "model": model_description(package), "parameters": params.model_dump(mode="json"),
              "device": where.describe()}
    t = result.thresholds
    logger.info("thresholds on %d %s images (%s%s): image %.3f, pixel %.3f, min area %d px%s", len(dataset),
                params.split, result.report["status"], f", test-time flips {params.tta}" if params.tta else "",
                t.image, t.pixel, t.min_area, f", per class {t.per_class}" if t.per_class else "")
    # the operating point was tuned on these views: the package predicts with them wherever it goes
    tuned = ModelPackage(package.state_dict, {**package.meta, "tta": list(params.tta)}, result.thresholds)
    outcome = NodeOutcome(tags={THRESHOLDS_STATUS_TAG: result.report["status"]})
    return report, plot_threshold_curves(result.report), tuned, outcome
