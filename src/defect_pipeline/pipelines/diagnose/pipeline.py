"""``kedro run --pipeline=diagnose --params diagnosis.history=<history.csv>``."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from defect_pipeline.pipelines.diagnose import nodes


def create_pipeline() -> Pipeline:
    """The catalog's ``diagnosis_history`` (the file ``--params diagnosis.history`` names) → the diagnosis."""
    return Pipeline([
        Node(nodes.diagnose_history, ["diagnosis_history", "params:diagnosis", "params:model", "params:stage1",
                                      "params:stage2", "params:stage3"],
             ["diagnosis_report", "diagnosis_report_md"], name="diagnose_history"),
    ])
