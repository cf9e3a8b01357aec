"""``kedro run --pipeline=thresholds``: stage3's model → thresholds.json + the tuned model package (+ the node's
:class:`~defect_pipeline.tracking.outcome.NodeOutcome`, whose tag says whether the thresholds were tuned or kept fixed)."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from defect_pipeline.pipelines.thresholds import nodes
from defect_pipeline.tracking.runs import TRACKED_STAGE_TAG, kind_tag

SOURCE_MODEL = "stage3.model"


def create_pipeline() -> Pipeline:
    return Pipeline([
        Node(nodes.tune,
             [SOURCE_MODEL, "manifest", "raw_source", "scan_summary", "params:thresholds", "params:data",
              "params:runtime"],
             ["tuned_thresholds", "threshold_curves", "tuned_model", "thresholds_outcome"], name="thresholds",
             tags=[TRACKED_STAGE_TAG, kind_tag("thresholds")]),
    ])
