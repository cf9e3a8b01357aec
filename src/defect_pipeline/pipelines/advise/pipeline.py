"""``kedro run --pipeline=advise``: recipe advice from the manifest and the machine (changes nothing)."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from defect_pipeline.config import STAGES
from defect_pipeline.pipelines.advise import nodes


def create_pipeline() -> Pipeline:
    return Pipeline([
        Node(nodes.recipe_advice,
             ["manifest", "params:trainer", "params:model", *(f"params:{stage}" for stage in STAGES)],
             ["advice", "advice_md"], name="recipe_advice"),
    ])
