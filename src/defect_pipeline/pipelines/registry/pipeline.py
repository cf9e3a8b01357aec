"""Wiring of the model registry nodes: ``register_model`` joins the ``thresholds`` pipeline and
``promote`` the ``evaluate`` pipeline (``pipeline_registry.py``); ``kedro run --pipeline=promote`` runs
the promotion alone, from the last evaluation."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from defect_pipeline.pipelines.registry import nodes


def create_register_pipeline() -> Pipeline:
    return Pipeline([Node(nodes.register, ["tuned_model", "params:registry"], "model_registration",
                          name="register_model")])


def create_promote_pipeline() -> Pipeline:
    return Pipeline([Node(nodes.promote_model, ["evaluation_summary", "manifest", "params:registry"],
                          ["promotion_summary", "promotion_report"], name="promote")])
