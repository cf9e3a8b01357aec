"""``kedro run --pipeline=export``: data/06_models/tuned/model.onnx (+ model.int8.onnx with
``export.quantize: int8``) and the parity report."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from defect_pipeline.pipelines.export import nodes
from defect_pipeline.tracking.runs import TRACKED_STAGE_TAG, kind_tag


def create_pipeline() -> Pipeline:
    return Pipeline([
        Node(nodes.export, ["tuned_model", "manifest", "raw_source", "scan_summary", "params:export", "params:data",
                            "params:runtime"], ["tuned_model_onnx", "export_report"],
             name="export", tags=[TRACKED_STAGE_TAG, kind_tag("export")]),
    ])
