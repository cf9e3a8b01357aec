"""``kedro run --pipeline=compare_runs``: reads the experiment's stage runs from MLflow."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from defect_pipeline.pipelines.compare_runs import nodes


def create_pipeline() -> Pipeline:
    return Pipeline([
        Node(nodes.compare_runs, ["mlflow_stage_runs", "params:compare_runs"],
             ["run_comparison", "run_comparison_best", "run_comparison_md", "run_comparison_plot"],
             name="compare_runs"),
    ])
