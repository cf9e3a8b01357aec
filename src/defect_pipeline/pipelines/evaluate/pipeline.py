"""``kedro run --pipeline=evaluate``: the tuned model on the test split."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from defect_pipeline.pipelines.evaluate import nodes
from defect_pipeline.tracking.runs import TRACKED_STAGE_TAG, kind_tag


def create_pipeline() -> Pipeline:
    return Pipeline([
        Node(nodes.evaluate,
             ["tuned_model", "manifest", "raw_source", "scan_summary", "params:evaluation", "params:data",
              "params:runtime"],
             ["evaluation_summary", "evaluation_report", "evaluation_metrics", "confusion_matrix", "pr_curves",
              "worst_predictions"], name="evaluate", tags=[TRACKED_STAGE_TAG, kind_tag("evaluation")]),
    ])
