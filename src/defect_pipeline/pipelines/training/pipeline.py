"""Wiring of one training stage, reused under the namespaces ``stage1``, ``stage2``, ``stage3``."""

from __future__ import annotations

from functools import partial, update_wrapper

from kedro.pipeline import Node, Pipeline

from defect_pipeline.pipelines.training import nodes
from defect_pipeline.tracking.runs import TRACKED_STAGE_TAG

SHARED_PARAMETERS = ("params:model", "params:augmentation", "params:data", "params:runtime", "params:diagnosis",
                     "params:trainer")
# StageResult field → dataset (namespaced by the stage: stage2.history, stage2.model ...)
OUTPUTS = {"checkpoints": "checkpoints", "history": "history", "summary": "training_summary", "curves": "curves",
           "package": "model", "steps": "steps", "diagnosis": "diagnosis", "diagnosis_md": "diagnosis_md"}


def create_stage_pipeline(stage: str, previous: str | None) -> Pipeline:
    """One stage: ``train`` under namespace ``stage`` with parameter block ``params:<stage>``.

    The node runs in its own MLflow child run (tag ``mlflow_child_run``, see
    :class:`defect_pipeline.hooks.child_runs.MlflowStageRunHook`); ``model`` is the best checkpoint as a
    model package, logged there as the run's pyfunc model.
    Datasets are namespaced (``stage2.history``, ``stage2.checkpoints`` ...); the data outputs
    and the shared ``model``/``augmentation``/``data`` blocks are not. A stage after the first
    also reads the previous stage's checkpoint store, which orders the stages in the DAG. ``preview_dir`` is
    the folder the validation previews are written into while the stage trains.
    """
    inputs = ["manifest", "raw_source", "scan_summary", "checkpoint_dir", "preview_dir", *SHARED_PARAMETERS,
              "params:stage"]
    if previous is not None:
        inputs.append("init_checkpoints")
    train = update_wrapper(partial(nodes.train_stage, stage_name=stage), nodes.train_stage)
    template = Pipeline([Node(train, inputs, OUTPUTS, name="train", tags=[TRACKED_STAGE_TAG])])
    shared_inputs: dict[str, str] = {name: name for name in ("manifest", "raw_source", "scan_summary")}
    if previous is not None:
        shared_inputs["init_checkpoints"] = f"{previous}.checkpoints"
    return Pipeline(template, namespace=stage, inputs=shared_inputs,
                    parameters={**{p: p for p in SHARED_PARAMETERS}, "params:stage": f"params:{stage}"})


def create_augmentation_pipeline() -> Pipeline:
    """The augmentation preview grid (``08_reporting/augmentation_preview.png``)."""
    return Pipeline([
        Node(nodes.preview_augmentation,
             ["manifest", "raw_source", "scan_summary", "params:augmentation", "params:model", "params:data",
              "params:trainer"],
             "augmentation_preview", name="preview_augmentation"),
    ])
