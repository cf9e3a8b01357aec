"""``kedro run --pipeline=thresholds``: a stage's model → thresholds.json + the tuned model package.

Which stage: ``thresholds.model_stage`` (``auto``: the stage that trained last). Every stage's
model is an input of ``select_model``, so in a run that trains stages the thresholds wait for all
of them; the node hands on the chosen one, and the tuned package (``tuned_model``) is what
evaluate, export and inference read. The tuning node also returns its
:class:`~defect_pipeline.tracking.outcome.NodeOutcome`, whose tag says whether the thresholds were
tuned or kept fixed.
"""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from defect_pipeline.config import STAGES
from defect_pipeline.pipelines.thresholds import nodes
from defect_pipeline.tracking.runs import TRACKED_STAGE_TAG, kind_tag

STAGE_MODELS = [f"{stage}.model" for stage in STAGES]  # in training order, as select_model expects them


def create_pipeline() -> Pipeline:
    return Pipeline([
        Node(nodes.select_model, ["params:thresholds", *STAGE_MODELS], "selected_model", name="select_model"),
        Node(nodes.tune,
             ["selected_model", "manifest", "raw_source", "scan_summary", "params:thresholds", "params:data",
              "params:runtime", "params:trainer"],
             ["tuned_thresholds", "threshold_curves", "tuned_model", "thresholds_outcome"], name="thresholds",
             tags=[TRACKED_STAGE_TAG, kind_tag("thresholds")]),
    ])
