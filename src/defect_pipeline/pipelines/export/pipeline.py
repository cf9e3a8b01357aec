"""``kedro run --pipeline=export``: data/06_models/tuned/model.onnx (+ the parity report)."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from defect_pipeline.pipelines.export import nodes
from defect_pipeline.tracking.runs import TRACKED_STAGE_TAG, kind_tag


def create_pipeline() -> Pipeline:
    return Pipeline([
        Node(nodes.export, ["tuned_model", "params:export", "params:runtime"], ["tuned_model_onnx", "export_report"],
             name="export", tags=[TRACKED_STAGE_TAG, kind_tag("export")]),
    ])
