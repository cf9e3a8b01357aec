"""``kedro run --pipeline=advise``: recipe advice from the manifest and the machine (changes nothing)."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from defect_pipeline.pipelines.advise import nodes


def create_pipeline() -> Pipeline:
    return Pipeline([
        Node(nodes.recipe_advice,
             ["manifest", "params:trainer", "params:model", "params:stage1", "params:stage2", "params:stage3"],
             ["advice", "advice_md"], name="recipe_advice"),
    ])
