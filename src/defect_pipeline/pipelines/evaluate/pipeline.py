"""``kedro run --pipeline=evaluate``: the tuned model on the test split."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from defect_pipeline.pipelines.evaluate import nodes
from defect_pipeline.tracking.runs import TRACKED_STAGE_TAG, kind_tag


# what evaluate returns → its dataset (conf/base/catalog.yml)
OUTPUTS = {"summary": "evaluation_summary", "report": "evaluation_report", "metrics": "evaluation_metrics",
           "confusion": "confusion_matrix", "pixel_confusion": "pixel_confusion_matrix",
           "per_class": "per_class_metrics", "curves": "pr_curves", "gallery": "worst_predictions"}


def create_pipeline() -> Pipeline:
    return Pipeline([
        Node(nodes.evaluate,
             ["tuned_model", "manifest", "raw_source", "scan_summary", "params:evaluation", "params:data",
              "params:runtime", "params:trainer"],
             OUTPUTS, name="evaluate", tags=[TRACKED_STAGE_TAG, kind_tag("evaluation")]),
    ])
