"""Pre-run checks: a run that cannot succeed is refused before any node runs (nothing written, no MLflow run).

The refusal is a :class:`click.ClickException`, so ``kedro run`` prints its few lines (``Error: ...``) and
exits 1 instead of a traceback; in Python (``KedroSession.run``) it is raised like any error.

Locations come from the catalog's resolved configuration (the ``filepath`` or ``path`` Kedro
itself treats as a location, made absolute by the context), never from a dataset's private
attributes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click
from kedro.framework.hooks import hook_impl
from kedro.framework.project import pipelines as registered_pipelines
from kedro.io.core import get_protocol_and_path

from defect_pipeline.config import DataParams, StageParams
from defect_pipeline.hooks.missing_inputs import (
    missing_inputs,
    missing_inputs_message,
    pipelines_to_run,
    producers,
)
from defect_pipeline.ml.dataset import labels_from_manifest
from defect_pipeline.tracking.runs import TRACKED_STAGE_TAG, kind_of


class PreRunChecksError(click.ClickException, RuntimeError):
    """A run that cannot succeed, refused before any node runs (nothing written, no MLflow run).

    ``kedro run`` shows it as ``Error: <message>`` and exits 1, without a traceback.
    """


class MissingInputsError(PreRunChecksError):
    """The run reads what another pipeline makes, and it is not there yet."""


def local_path(catalog: Any, name: str) -> Path | None:
    """The local file or folder the catalog entry ``name`` writes, if any (None: in memory or remote).

    Read from the entry's resolved configuration (patterns such as ``{stage}.history`` filled
    in): its ``filepath`` or ``path``, else that of the dataset it wraps (``dataset:``, as
    kedro-mlflow's ``MlflowArtifactDataset`` does).
    """
    config = catalog.config_resolver.resolve_pattern(name)
    while isinstance(config, dict):
        location = config.get("filepath") or config.get("path")
        if location:
            protocol, path = get_protocol_and_path(str(location))
            return Path(path) if protocol == "file" else None
        config = config.get("dataset")
    return None


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

    * what the run reads that another pipeline makes must be there (a fresh clone's
      ``kedro run --pipeline=stage2``): otherwise the message names it and the commands that make it;
    * every output location of the pipeline can be written (a file where a folder is needed, a
      read-only folder);
    * a stage that starts from the previous stage's model (``init_from: stageN``) when that stage
      is not part of this run: the previous model's classes must be the current data's.

    Raising in ``before_pipeline_run`` (tryfirst) stops ``kedro run`` before kedro-mlflow opens a run.
    """

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        _refuse_missing_inputs(run_params, pipeline, catalog)
        problems = unwritable_outputs({name: path for name in sorted(pipeline.all_outputs())
                                       if (path := local_path(catalog, name)) is not None})
        problems += _stage_problems(pipeline, catalog)
        if problems:
            raise PreRunChecksError("this run cannot succeed; nothing was run:\n  - " + "\n  - ".join(problems))


def _shown(path: Path | None) -> Path | None:
    """``path`` relative to the working directory when it lies below it (as the user typed it)."""
    if path is None:
        return None
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def _as_dict(block: Any) -> dict[str, Any] | None:
    """A parameter block as a dictionary (Kedro hands typed blocks to hooks as the models nodes are annotated with)."""
    return block.model_dump() if hasattr(block, "model_dump") else block


def _refuse_missing_inputs(run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
    """Raise :class:`MissingInputsError` when the run reads what another pipeline makes and it is not there."""
    registry = dict(registered_pipelines.items())
    made_by = producers(registry)
    parameters = catalog.load("parameters") if catalog.exists("parameters") else {}
    checks = {"params": lambda block: _as_dict(parameters.get(block)), "exists": catalog.exists,
              "location": lambda name: _shown(local_path(catalog, name))}
    missing = missing_inputs(pipeline, made_by, **checks)
    if not missing:
        return
    names = run_params.get("pipeline_names") or []
    run = "kedro run" + (f" --pipeline={names[0]}" if len(names) == 1 else
                         f" --pipelines={','.join(names)}" if names else "")
    to_run = pipelines_to_run(missing, registry, made_by, **checks)
    raise MissingInputsError(missing_inputs_message(run, missing, to_run, run_params.get("env")))


def _stage_problems(pipeline: Any, catalog: Any) -> list[str]:
    """A stage of this run that would start from a previous stage's model trained on other classes."""
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
        if cfg.resume and own is not None and own.load().has_last():
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
