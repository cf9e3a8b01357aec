"""MLflow child runs: each tracked node (a training stage, a comparison candidate, thresholds, evaluate,
predict, export) logs into its own run, nested in the run kedro-mlflow opens for ``kedro run``.

What a child run holds (run name, tags, readable parameters) is decided when its node starts, from
the parameters as written (YAML and ``--params``; nodes may receive them as typed models); how it
ends comes from the node itself: FAILED when the node raises or returns a
:class:`~defect_pipeline.tracking.outcome.NodeOutcome` that did not succeed, FINISHED otherwise.
The node's other outputs are never read to guess.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import mlflow
import pandas as pd
from kedro.framework.hooks import hook_impl

from defect_pipeline.config import CompareBackbonesParams, ModelParams, StageParams, TrainerParams
from defect_pipeline.data.manifest import manifest_hash
from defect_pipeline.ml.package import ModelStore
from defect_pipeline.tracking.outcome import NodeOutcome
from defect_pipeline.tracking.runs import (
    KIND_TAG,
    SOURCE_RUN_TAG,
    STAGE_TAG,
    TAG_PREFIX,
    TRACKED_STAGE_TAG,
    kind_of,
    log_params,
    reproducibility_tags,
    stage_params,
)
from defect_pipeline.util import flatten

logger = logging.getLogger(__name__)

MANIFEST_TAG = f"{TAG_PREFIX}manifest_hash"
# a node using a trained model (its ModelStore input): tag → field of the model's metadata
SOURCE_MODEL_TAGS = {SOURCE_RUN_TAG: "training_run_id", "backbone": "backbone", f"{TAG_PREFIX}source_stage": "stage"}
# parameter blocks left out of the child runs of thresholds, evaluate, predict and export
UNLOGGED_BLOCKS = ("params:data", "params:runtime", "params:trainer")


@dataclass
class _ChildRun:
    """The open child run of the node ``node``: closed once its last output was saved."""

    node: str
    run_id: str
    unsaved: set[str]
    status: str = "FINISHED"  # what the node said of its outcome (after_node_run)


class MlflowStageRunHook:
    """Each training stage (and thresholds, evaluate, inference, export) logs into a nested child run.

    kedro-mlflow opens one run per ``kedro run`` and has no nesting. For a node tagged
    ``mlflow_child_run`` this hook opens a child run named after the node's namespace
    (``stage1``...) once kedro-mlflow has re-activated the parent, logs the stage's readable
    parameters and tags, and closes it after the node's last output was saved — so the outputs
    that are MLflow artifacts (history, curves, summary, model) land in the child run. The run
    ends FAILED when the node raises (kedro-mlflow then fails the parent) or returns a
    :class:`NodeOutcome` that did not succeed (tagged ``defect_pipeline.comparison_status`` and
    ``defect_pipeline.error``), FINISHED otherwise; an outcome's own tags (e.g.
    ``defect_pipeline.thresholds_status``) are set either way. Child runs of nodes that use a
    trained model are tagged with the run that trained it (``defect_pipeline.source_run_id``).

    The parent run gets the reproducibility tags (git commit and dirty flag, kedro env, pipeline,
    command line) and the data-manifest hash once the manifest is read or written.
    """

    def __init__(self) -> None:
        self._parameters: dict[str, Any] = {}
        self._tags: dict[str, str] = {}
        self._child: _ChildRun | None = None
        self._manifest_hash: str | None = None

    @hook_impl
    def after_context_created(self, context) -> None:
        self._parameters = context.config_loader["parameters"]

    @hook_impl(trylast=True)
    def before_pipeline_run(self, run_params: dict[str, Any]) -> None:
        names = run_params.get("pipeline_names") or [run_params.get("pipeline_name") or "__default__"]
        names = [names] if isinstance(names, str) else names
        self._tags = reproducibility_tags(project_path=run_params.get("project_path", "."),
                                          env=run_params.get("env"), pipeline="+".join(names))
        self._child, self._manifest_hash = None, None
        if mlflow.active_run() is not None:
            mlflow.set_tags(self._tags)

    def _tag_manifest(self, dataset_name: str, data: Any) -> None:
        """The parent run's manifest hash, from the first manifest read or written outside a child run."""
        if dataset_name != "manifest" or self._manifest_hash is not None or not isinstance(data, pd.DataFrame):
            return
        if mlflow.active_run() is not None and self._child is None:
            self._manifest_hash = manifest_hash(data)
            mlflow.set_tag(MANIFEST_TAG, self._manifest_hash)

    @hook_impl
    def after_dataset_loaded(self, dataset_name: str, data: Any) -> None:
        self._tag_manifest(dataset_name, data)

    @hook_impl(trylast=True)
    def before_node_run(self, node: Any, inputs: dict[str, Any]) -> None:
        if TRACKED_STAGE_TAG not in node.tags or mlflow.active_run() is None:
            return
        kind = kind_of(node.tags)
        name = node.namespace or node.name
        blocks = {block: _written(self._parameters, block) for block in node.inputs if block.startswith("params:")}
        if kind in ("stage", "comparison"):
            training = _training_run(kind, name, blocks)
            if training is None:
                return  # an unused comparison slot: no run
            name, tags, params = training
        else:
            tags, params = {}, _block_params(blocks)
        tags = {**self._tags, KIND_TAG: kind, **tags, **_source_model_tags(inputs)}
        if self._manifest_hash:  # the data this run read or wrote (this node's manifest input is tagged already)
            tags[MANIFEST_TAG] = self._manifest_hash
        run = mlflow.start_run(run_name=name, nested=True, tags=tags)
        log_params(params)
        self._child = _ChildRun(node.name, run.info.run_id, set(node.outputs))
        logger.info("%s: MLflow child run %s", name, run.info.run_id)

    def _child_of(self, node: Any) -> _ChildRun | None:
        return self._child if self._child is not None and self._child.node == node.name else None

    def _end_child(self, status: str) -> None:
        child, self._child = self._child, None
        active = mlflow.active_run()
        if active is not None and active.info.run_id == child.run_id:
            mlflow.end_run(status)
        else:  # someone else changed the active run: close ours by id
            mlflow.MlflowClient().set_terminated(child.run_id, status)

    @hook_impl
    def after_node_run(self, node: Any, outputs: dict[str, Any]) -> None:
        """The node's own verdict (a NodeOutcome among its outputs) decides how its run ends."""
        child = self._child_of(node)
        if child is None:
            return
        outcome = next((value for value in outputs.values() if isinstance(value, NodeOutcome)), NodeOutcome())
        client = mlflow.MlflowClient()
        for key, value in outcome.tags.items():
            client.set_tag(child.run_id, key, str(value)[:5000])
        if not outcome.succeeded:
            client.set_tag(child.run_id, f"{TAG_PREFIX}comparison_status", outcome.tag)
            if outcome.error:
                client.set_tag(child.run_id, f"{TAG_PREFIX}error", outcome.error[:5000])
        child.status = outcome.mlflow_status
        if not outputs:  # nothing to save: after_dataset_saved will not close the run
            self._end_child(child.status)

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any, node: Any) -> None:
        self._tag_manifest(dataset_name, data)
        child = self._child_of(node)
        if child is not None:
            child.unsaved.discard(dataset_name)
            if not child.unsaved:
                self._end_child(child.status)

    @hook_impl
    def on_node_error(self, node: Any) -> None:
        if self._child_of(node) is not None:
            self._end_child("FAILED")


def _written(parameters: dict[str, Any], block: str) -> Any:
    """The parameter block ``params:<a.b>`` as written (``parameters["a"]["b"]``), None if absent."""
    value: Any = parameters
    for key in block[len("params:"):].split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _training_run(kind: str, name: str, blocks: dict[str, Any]) -> tuple[str, dict[str, str], dict[str, Any]] | None:
    """Run name, tags and parameters of a training stage or a comparison candidate (None: an unused slot).

    Model, stage and trainer parameters are those of the validated blocks, so the defaults the YAML
    leaves out are logged too; ``runtime.*`` as written, the augmentation recipe by its transform names.
    """
    model = blocks.get("params:model") or {}
    if kind == "comparison":
        compare = CompareBackbonesParams.model_validate(blocks["params:compare_backbones"])
        backbone = _slot_backbone(name, compare.backbones)
        if backbone is None:
            return None
        model, stage, name = {**model, "backbone": backbone}, compare.stage, f"compare:{backbone}"
    else:
        stage = StageParams.model_validate(blocks.get(f"params:{name}") or {})
    model_cfg = ModelParams.model_validate(model)
    trainer = TrainerParams.model_validate(blocks.get("params:trainer") or {})
    params = stage_params(model_cfg.model_dump(mode="json"), stage.model_dump(mode="json"),
                          runtime=blocks.get("params:runtime"), augmentation=blocks.get("params:augmentation"),
                          trainer=trainer.model_dump(mode="json"))
    return name, {STAGE_TAG: name, "backbone": str(model_cfg.backbone)}, params


def _slot_backbone(namespace: str, backbones: list[str]) -> str | None:
    """The backbone the comparison slot ``compare_backbones.slot<N>`` trains, or None when N > len(backbones)."""
    slot = int(namespace.rsplit(".slot", 1)[1])
    return backbones[slot - 1] if slot <= len(backbones) else None


def _block_params(blocks: dict[str, Any]) -> dict[str, Any]:
    """A node's parameter blocks as written, flattened (``evaluation.split``, ``thresholds.criterion`` ...)."""
    return {key: value for block, params in blocks.items()
            if block not in UNLOGGED_BLOCKS and isinstance(params, dict)
            for key, value in flatten(params, block[len("params:"):]).items()}


def _source_model_tags(inputs: dict[str, Any]) -> dict[str, str]:
    """For a node using a trained model: the run that trained it, its backbone and stage."""
    tags: dict[str, str] = {}
    for store in (value for value in inputs.values() if isinstance(value, ModelStore)):
        meta = store.meta()
        tags.update({tag: str(meta[key]) for tag, key in SOURCE_MODEL_TAGS.items() if meta.get(key)})
    return tags
