"""``kedro run --pipeline=ensemble``: several models (or one with test-time flips) tuned and compared."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from defect_pipeline.pipelines.ensemble import nodes
from defect_pipeline.tracking.runs import TRACKED_STAGE_TAG, kind_tag


def create_pipeline() -> Pipeline:
    return Pipeline([
        Node(nodes.tune_ensemble,
             ["manifest", "raw_source", "scan_summary", "params:ensemble", "params:thresholds", "params:data",
              "params:runtime", "params:trainer"],
             ["ensemble_model", "ensemble_thresholds"], name="tune_ensemble",
             tags=[TRACKED_STAGE_TAG, kind_tag("ensemble_thresholds")]),
        Node(nodes.evaluate_ensemble,
             ["ensemble_model", "manifest", "raw_source", "scan_summary", "params:ensemble", "params:evaluation",
              "params:data", "params:runtime", "params:trainer"],
             ["ensemble_summary", "ensemble_report", "ensemble_metrics"], name="evaluate_ensemble",
             tags=[TRACKED_STAGE_TAG, kind_tag("ensemble_evaluation")]),
    ])
