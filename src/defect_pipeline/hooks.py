"""Project hooks: validate parameters and the tracking server first; one MLflow child run per stage."""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from kedro.framework.hooks import hook_impl

from defect_pipeline.config import (
    CompareBackbonesParams,
    ModelParams,
    ParameterError,
    StageParams,
    TrainerParams,
    validate_parameters,
)
from defect_pipeline.data.manifest import manifest_hash
from defect_pipeline.ml.predict import ModelStore
from defect_pipeline.tracking.runs import (
    KIND_TAG,
    SOURCE_RUN_TAG,
    STAGE_TAG,
    TAG_PREFIX,
    TRACKED_STAGE_TAG,
    check_tracking_uri,
    flatten,
    kind_of,
    log_params,
    reproducibility_tags,
    stage_params,
)

logger = logging.getLogger(__name__)


class ParameterValidationHook:
    """Fail at start-up, naming the key, when any parameter is unknown or invalid.

    Runs on ``after_context_created`` — before the catalog is used, before any node runs and
    before kedro-mlflow opens a run — on the parameters including ``--params`` overrides. The
    model block is also checked against timm and the decoder on the meta device (unknown
    backbone, image size vs stride, decoder width), which would otherwise fail only when a stage
    starts.
    """

    @hook_impl(tryfirst=True)
    def after_context_created(self, context) -> None:
        validated = validate_parameters(context.params)
        if "model" in validated:
            check_model_block(validated["model"])
        logger.debug("parameters validated")


def check_model_block(model: ModelParams) -> None:
    """The model block against timm and the decoder (on the meta device), as a ParameterError naming the key."""
    from defect_pipeline.ml.model import check_model_config

    try:
        check_model_config(model.backbone, decoder=model.decoder, decoder_channels=model.decoder_channels,
                           image_size=model.image_size, seg_mode=model.seg_mode)
    except ValueError as error:
        message = str(error)
        key = ("backbone" if "unknown backbone" in message else "image_size" if "image size" in message
               else "decoder_channels" if "decoder_channels" in message or "multiple of 32" in message
               else "decoder")
        raise ParameterError([f"model.{key}: {message}"]) from None


def _sigterm_to_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"terminated by signal {signum}")


def _end_open_runs(status: str) -> None:
    """At exit: end every run still RUNNING with ``status``.

    The fluent run stack can still hold a run that is already closed: kedro-mlflow re-activates
    its run in each node's thread and ends it once, in the main thread. Such an entry is popped
    with the status it already has (a finished run must not turn KILLED at exit).
    """
    client = mlflow.MlflowClient()
    while mlflow.active_run() is not None:
        run_id = mlflow.active_run().info.run_id
        current = client.get_run(run_id).info.status
        if current != "RUNNING":
            mlflow.end_run(current)
            continue
        mlflow.end_run(status)
        logger.warning("MLflow run %s ended %s: the run was interrupted", run_id, status)


class PreRunChecksError(RuntimeError):
    """A run that cannot succeed, refused before any node runs (nothing written, no MLflow run)."""


def _local_path(dataset: Any) -> Path | None:
    """The local file or folder a catalog dataset writes, if any."""
    path = getattr(dataset, "_filepath", None) or getattr(dataset, "_path", None)
    if path is None or getattr(dataset, "_protocol", "file") not in ("file", None):
        return None
    return Path(str(path))


def unwritable_outputs(paths: dict[str, Path]) -> list[str]:
    """One message per output whose location cannot be created or written (dataset name → path).

    The nearest existing folder above each path must be a folder and writable; a file where a
    folder is needed, or a read-only folder, is named with the dataset that would fail on it.
    """
    problems: dict[Path, str] = {}
    for name, path in sorted(paths.items()):
        existing = next((p for p in path.parents if p.exists()), None)
        if existing is None or existing in problems:
            continue
        if not existing.is_dir():
            problems[existing] = (f"{existing} is a file, but {name} must be written into a folder there "
                                  f"({path}): move or delete the file")
        elif not os.access(existing, os.W_OK | os.X_OK):
            problems[existing] = (f"{existing} is not writable, and {name} is written there ({path}): fix its "
                                  "permissions or point the catalog entry elsewhere")
    return list(problems.values())


def stage_start_problem(stage: str, previous: str, previous_labels: dict[str, Any] | None,
                        data_labels: dict[str, Any]) -> str | None:
    """Why ``stage`` cannot start from ``previous``'s model, or None."""
    if previous_labels is None or previous_labels == data_labels:
        return None
    return (f"{stage} starts from the previous stage's model ({previous}), whose classes {previous_labels} differ "
            f"from the current data's {data_labels}: retrain {previous} on this data (kedro run --pipeline="
            f"{previous}, or the whole pipeline), or set {stage}.init_from: scratch")


class PreRunChecksHook:
    """Checks that need the pipeline and catalog, before any node runs and before kedro-mlflow's run.

    * every output location of the pipeline can be written (a file where a folder is needed, a
      read-only folder);
    * a stage that starts from the previous stage's model (``init_from: stageN``) when that stage
      is not part of this run: the previous model's classes must be the current data's.

    Raising in ``before_pipeline_run`` (tryfirst) stops ``kedro run`` before kedro-mlflow opens a run.
    """

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        problems = unwritable_outputs({name: path for name in sorted(pipeline.all_outputs())
                                       if (path := _local_path(catalog.get(name))) is not None})
        problems += self._stage_problems(pipeline, catalog)
        if problems:
            raise PreRunChecksError("this run cannot succeed; nothing was run:\n  - " + "\n  - ".join(problems))

    @staticmethod
    def _stage_problems(pipeline: Any, catalog: Any) -> list[str]:
        from defect_pipeline.config import DataParams
        from defect_pipeline.ml.dataset import labels_from_manifest

        produced = pipeline.all_outputs()
        if "scan_summary" in produced or "manifest" in produced:
            return []  # the data is rebuilt in this run: the stage compares classes when it starts
        problems: list[str] = []
        data_labels: dict[str, Any] | None = None  # read once, when a stage needs it
        for node in pipeline.nodes:
            stage = node.namespace
            if TRACKED_STAGE_TAG not in node.tags or kind_of(node.tags) != "stage" or stage is None:
                continue
            cfg = StageParams.model_validate(catalog.load(f"params:{stage}"))
            if not cfg.init_from.startswith("stage") or f"{cfg.init_from}.model" in produced:
                continue
            own = catalog.get(f"{stage}.checkpoint_dir")
            if cfg.resume and own is not None and (Path(str(_local_path(own))) / "last.pt").is_file():
                continue  # resuming this stage: its own checkpoint is checked when it loads
            previous = catalog.get(f"{cfg.init_from}.model")
            if previous is None or not previous.exists() or not catalog.exists("manifest"):
                continue  # nothing to compare: the stage itself says what is missing
            if data_labels is None:
                data = DataParams.model_validate(catalog.load("params:data"))
                classes = list(catalog.load("scan_summary")["classes"])
                data_labels = labels_from_manifest(catalog.load("manifest"), good_label=data.good_label,
                                                   defect_classes=classes).to_dict()
            problem = stage_start_problem(stage, cfg.init_from, previous.load().meta().get("labels"), data_labels)
            if problem:
                problems.append(problem)
        return problems


class TrackingServerCheckHook:
    """An unreachable tracking server fails the run within seconds, before kedro-mlflow touches it.

    MLflow's client would otherwise retry with back-off for minutes, after the data pipeline may
    already have run. Skipped when an MLflow run is already active (an orchestrator owns it).
    """

    @hook_impl(tryfirst=True)
    def after_context_created(self, context) -> None:
        if mlflow.active_run() is not None:
            return
        server = (context.config_loader["mlflow"] or {}).get("server", {})
        uri = server.get("mlflow_tracking_uri")
        if uri:
            check_tracking_uri(str(uri))


class MlflowStageRunHook:
    """Each training stage (and thresholds, evaluate, inference, export) logs into a nested child run.

    kedro-mlflow opens one run per ``kedro run`` and has no nesting. For a node tagged
    ``mlflow_child_run`` this hook opens a child run named after the node's namespace
    (``stage1``...) once kedro-mlflow has re-activated the parent, logs the stage's readable
    parameters and tags, and closes it after the node's last output was saved — so the outputs
    that are MLflow artifacts (history, curves, summary, model) land in the child run. A node that
    raises closes its child run as FAILED (kedro-mlflow then fails the parent). Child runs of nodes
    that use a trained model are tagged with the run that trained it (``defect_pipeline.source_run_id``).

    The parent run gets the reproducibility tags (git commit and dirty flag, kedro env, pipeline,
    command line) and the data-manifest hash once the manifest is read or written.
    """

    def __init__(self) -> None:
        self._tags: dict[str, str] = {}
        self._child: tuple[str, str, set[str]] | None = None  # (node name, run id, outputs not saved yet)
        self._manifest_tagged = False
        self._manifest_hash: str | None = None
        self._exit_handler_registered = False
        self._previous_sigterm: Any = None

    @hook_impl(trylast=True)
    def before_pipeline_run(self, run_params: dict[str, Any]) -> None:
        self._watch_interruptions()
        names = run_params.get("pipeline_names") or [run_params.get("pipeline_name") or "__default__"]
        names = [names] if isinstance(names, str) else names
        self._tags = reproducibility_tags(project_path=run_params.get("project_path", "."),
                                          env=run_params.get("env"), pipeline="+".join(names))
        self._child, self._manifest_tagged, self._manifest_hash = None, False, None
        if mlflow.active_run() is not None:
            mlflow.set_tags(self._tags)

    def _watch_interruptions(self) -> None:
        """SIGTERM stops the run like Ctrl-C, and an interrupted run ends KILLED in MLflow.

        A ``KeyboardInterrupt`` is not an ``Exception``: Kedro's error hooks do not see it and
        MLflow's own exit handler would mark the runs FINISHED. This handler (registered after
        MLflow's, so it runs first at exit) closes every run still open as KILLED; after a normal
        or failed run nothing is open any more and it does nothing.
        """
        if not self._exit_handler_registered:
            atexit.register(_end_open_runs, "KILLED")
            self._exit_handler_registered = True
        if threading.current_thread() is threading.main_thread():
            self._previous_sigterm = signal.signal(signal.SIGTERM, _sigterm_to_keyboard_interrupt)

    @hook_impl
    def after_pipeline_run(self) -> None:
        if threading.current_thread() is threading.main_thread() and self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None

    @hook_impl
    def on_pipeline_error(self) -> None:
        self.after_pipeline_run()

    def _tag_manifest(self, dataset_name: str, data: Any) -> None:
        if dataset_name != "manifest" or self._manifest_tagged or not isinstance(data, pd.DataFrame):
            return
        if mlflow.active_run() is not None and self._child is None:
            self._manifest_hash = manifest_hash(data)
            mlflow.set_tag(f"{TAG_PREFIX}manifest_hash", self._manifest_hash)
            self._manifest_tagged = True

    @hook_impl
    def after_dataset_loaded(self, dataset_name: str, data: Any) -> None:
        self._tag_manifest(dataset_name, data)

    @hook_impl(trylast=True)
    def before_node_run(self, node: Any, inputs: dict[str, Any]) -> None:
        if TRACKED_STAGE_TAG not in node.tags or mlflow.active_run() is None:
            return
        name = node.namespace or node.name
        kind = kind_of(node.tags)
        tags = {**self._tags, KIND_TAG: kind}
        model = inputs.get("params:model") or {}
        stage_block = inputs.get(f"params:{name}") or {}
        if kind == "comparison":  # a slot of compare_backbones: named after its backbone, unused slots untracked
            compare = CompareBackbonesParams.model_validate(inputs["params:compare_backbones"])
            slot = int(name.rsplit("slot", 1)[1])
            if slot > len(compare.backbones):
                return
            model = {**model, "backbone": compare.backbones[slot - 1]}
            stage_block = compare.stage.model_dump(mode="json")
            name = f"compare:{compare.backbones[slot - 1]}"
        if kind in ("stage", "comparison"):
            tags[STAGE_TAG] = name
            tags["backbone"] = str(ModelParams.model_validate(model).backbone)
        for value in inputs.values():  # a node using a trained model: which run trained it
            if isinstance(value, ModelStore):
                meta = value.meta()
                tags.update({key: str(meta[field]) for key, field in (
                    (SOURCE_RUN_TAG, "training_run_id"), ("backbone", "backbone"),
                    (f"{TAG_PREFIX}source_stage", "stage")) if meta.get(field)})
        if self._manifest_hash:  # the data this run read or wrote (this node's manifest input is tagged already)
            tags[f"{TAG_PREFIX}manifest_hash"] = self._manifest_hash
        run = mlflow.start_run(run_name=name, nested=True, tags=tags)
        if kind in ("stage", "comparison"):  # the validated blocks, so defaults the YAML leaves out are logged too
            log_params(stage_params(
                ModelParams.model_validate(model).model_dump(mode="json"),
                StageParams.model_validate(stage_block).model_dump(mode="json"),
                runtime=inputs.get("params:runtime"), augmentation=inputs.get("params:augmentation"),
                trainer=TrainerParams.model_validate(inputs.get("params:trainer") or {}).model_dump(mode="json")))
        else:
            machine = ("params:data", "params:runtime", "params:trainer")
            log_params({key: value for block, params in inputs.items() if block.startswith("params:")
                        and block not in machine and isinstance(params, dict)
                        for key, value in flatten(params, block[len("params:"):]).items()})
        self._child = (node.name, run.info.run_id, set(node.outputs))
        logger.info("%s: MLflow child run %s", name, run.info.run_id)

    def _end_child(self, node: Any, status: str) -> None:
        if self._child is None or self._child[0] != node.name:
            return
        run_id = self._child[1]
        self._child = None
        active = mlflow.active_run()
        if active is not None and active.info.run_id == run_id:
            mlflow.end_run(status)
        else:  # someone else changed the active run: close ours by id
            mlflow.MlflowClient().set_terminated(run_id, status)

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any, node: Any) -> None:
        self._tag_manifest(dataset_name, data)
        if self._child is not None and self._child[0] == node.name:
            self._child[2].discard(dataset_name)
            status = data.get("status") if isinstance(data, dict) else None
            if status not in (None, "ok"):  # a comparison candidate that failed or was skipped
                mlflow.set_tag(f"{TAG_PREFIX}comparison_status", status)
                if data.get("error"):
                    mlflow.set_tag(f"{TAG_PREFIX}error", str(data["error"])[:5000])
                self._end_child(node, "FAILED")
            elif not self._child[2]:
                self._end_child(node, "FINISHED")

    @hook_impl
    def after_node_run(self, node: Any, outputs: dict[str, Any]) -> None:
        if not outputs:  # nothing to save: after_dataset_saved will not close the run
            self._end_child(node, "FINISHED")

    @hook_impl
    def on_node_error(self, node: Any) -> None:
        self._end_child(node, "FAILED")
