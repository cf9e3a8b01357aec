"""``kedro run --pipeline=inspect_checkpoints [--params inspect.path=<folder>]``."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from defect_pipeline.pipelines.inspect_checkpoints import nodes


def create_pipeline() -> Pipeline:
    return Pipeline([
        Node(nodes.inspect_checkpoints, ["checkpoint_folder", "params:inspect", "parameters"],
             ["checkpoint_inventory", "checkpoint_report", "checkpoint_report_md"], name="inspect_checkpoints"),
    ])
