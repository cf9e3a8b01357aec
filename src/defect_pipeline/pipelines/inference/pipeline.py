"""Inference over ``inference.input_dir`` (``--pipeline=inference``) or the test split (``kedro run``)."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from defect_pipeline.pipelines.inference import nodes
from defect_pipeline.tracking.runs import TRACKED_STAGE_TAG, kind_tag

OUTPUTS = ["predictions", "predicted_masks", "prediction_overlays", "inference_summary"]


def _predict() -> Node:
    return Node(nodes.predict, ["inference_inputs", "tuned_model", "params:inference", "params:runtime",
                                "inference_output_dir", "params:trainer"], OUTPUTS,
                name="predict", tags=[TRACKED_STAGE_TAG, kind_tag("inference")])


def create_pipeline() -> Pipeline:
    """``kedro run --pipeline=inference --params inference.input_dir=...``."""
    return Pipeline([
        Node(nodes.list_input_images, "params:inference", "inference_inputs", name="list_input_images"),
        _predict(),
    ])


def create_test_split_pipeline() -> Pipeline:
    """The same prediction over the manifest's test split: the end of the default ``kedro run``."""
    return Pipeline([
        Node(nodes.test_split_images, ["manifest", "raw_source", "params:evaluation"], "inference_inputs",
             name="test_split_images"),
        _predict(),
    ])
