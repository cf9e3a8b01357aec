"""``kedro run --pipeline=compare_backbones``: the training stage reused in namespaced slots."""

from __future__ import annotations

from functools import partial, update_wrapper

from kedro.pipeline import Node, Pipeline

from defect_pipeline.config.comparison import MAX_BACKBONES
from defect_pipeline.pipelines.compare_backbones import nodes
from defect_pipeline.tracking.runs import TRACKED_STAGE_TAG, kind_tag

NAMESPACE = "compare_backbones"
SHARED = ("params:model", "params:augmentation", "params:data", "params:runtime", "params:diagnosis",
          "params:trainer", "params:compare_backbones")


def _slot(slot: int) -> Pipeline:
    """Slot ``slot``: trains ``compare_backbones.backbones[slot - 1]`` (a no-op when the list is shorter).

    Outputs ``compare_backbones.slot<N>.result`` (the table row) and ``.outcome`` (a
    :class:`~defect_pipeline.tracking.outcome.NodeOutcome`: how the slot's MLflow child run ends).
    """
    train = update_wrapper(partial(nodes.train_candidate, slot=slot), nodes.train_candidate)
    template = Pipeline([Node(train, ["manifest", "raw_source", "scan_summary", "checkpoint_dir", *SHARED],
                              ["result", "outcome"], name="train", tags=[TRACKED_STAGE_TAG, kind_tag("comparison")])])
    return Pipeline(template, namespace=f"{NAMESPACE}.slot{slot}",
                    inputs={name: name for name in ("manifest", "raw_source", "scan_summary")},
                    parameters={p: p for p in SHARED})


def create_pipeline() -> Pipeline:
    slots = [_slot(i) for i in range(1, MAX_BACKBONES + 1)]
    report = Node(nodes.compare, [f"{NAMESPACE}.slot{i}.result" for i in range(1, MAX_BACKBONES + 1)],
                  ["backbone_comparison", "backbone_comparison_md"], name="compare_backbones")
    return sum(slots, Pipeline([])) + Pipeline([report])
