"""What a run reads that another pipeline makes and that is not there yet, and the commands that make it.

``kedro run --pipeline=stage2`` on a fresh clone used to end in a 243-line traceback about
``manifest.parquet``. :func:`missing_inputs` finds, before anything runs, every input of the run that
another registered pipeline produces and that does not exist, and :func:`missing_inputs_message`
says in a few lines what is missing and which ``kedro run`` commands make it, in order (the
producers' own missing inputs included: ``evaluate`` on a fresh clone needs ``data``, the three
stages and ``thresholds``), or plain ``kedro run``.

Inputs that the run's parameters make unnecessary are not asked for: a stage that starts from
scratch (or resumes its own ``last.pt``) does not need the previous stage's checkpoints,
``thresholds`` needs one stage's model (``thresholds.model_stage: auto``) or the named one, and
``inference`` with ``inference.checkpoint`` set does not read the tuned model.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: pipelines that only group others; a missing input is attributed to the smaller pipeline that makes it
COMPOSITE_PIPELINES = ("__default__", "training")
_STAGE_MODEL = re.compile(r"^(stage\d+)\.model$")
_STAGE_CHECKPOINTS = re.compile(r"^(stage\d+)\.checkpoints$")


@dataclass(frozen=True)
class MissingInput:
    """An input of the run that is not there, and the pipeline that makes it."""

    name: str
    location: str | None
    producer: str


def producers(pipelines: Mapping[str, Any]) -> dict[str, str]:
    """Dataset name → the first registered (non-composite) pipeline that outputs it."""
    made_by: dict[str, str] = {}
    for name, pipeline in pipelines.items():
        if name in COMPOSITE_PIPELINES:
            continue
        for output in sorted(pipeline.all_outputs()):
            made_by.setdefault(output, name)
    return made_by


Params = Callable[[str], Mapping[str, Any] | None]
Exists = Callable[[str], bool]
Location = Callable[[str], Path | None]


def _resumes(stage: str, config: Mapping[str, Any], location: Location) -> bool:
    folder = location(f"{stage}.checkpoint_dir")
    return bool(config.get("resume", True)) and folder is not None and (folder / "last.pt").is_file()


def _needed(pipeline: Any, params: Params, exists: Exists, location: Location) -> list[str]:
    """The run's inputs that its parameters need (alternatives resolved), whoever makes them."""
    inputs = sorted(i for i in pipeline.inputs() if not i.startswith("params:") and i != "parameters")
    needed = [i for i in inputs if not _STAGE_MODEL.match(i) and not _STAGE_CHECKPOINTS.match(i)]
    stage_models = [i for i in inputs if _STAGE_MODEL.match(i)]
    if stage_models:  # thresholds: the named stage's model, or (auto) any one of them
        chosen = (params("thresholds") or {}).get("model_stage", "auto")
        if chosen != "auto":
            needed += [i for i in stage_models if i == f"{chosen}.model"]
        elif not any(exists(i) for i in stage_models) and not any(
                _STAGE_MODEL.match(name) for name in pipeline.all_outputs()):  # auto takes one this run trains
            needed.append(stage_models[0])
    for node in pipeline.nodes:  # a stage reads the previous stage's checkpoints only to start from them
        for name in node.inputs:
            match = _STAGE_CHECKPOINTS.match(name)
            if match is None or name not in inputs or not node.namespace:
                continue
            config = params(node.namespace) or {}
            if config.get("init_from") == match.group(1) and not _resumes(node.namespace, config, location):
                needed.append(name)
    if set(inputs) <= {"inference_output_dir", "tuned_model"} and (params("inference") or {}).get("checkpoint"):
        needed = [i for i in needed if i != "tuned_model"]  # inference.checkpoint names the model to use
    return sorted(set(needed))


def missing_inputs(pipeline: Any, made_by: Mapping[str, str], *, params: Params, exists: Exists,
                   location: Location) -> list[MissingInput]:
    """The inputs of ``pipeline`` that another pipeline makes, that its parameters need, and that are not there.

    Args:
        pipeline: the (filtered) pipeline about to run.
        made_by: :func:`producers` of the registered pipelines.
        params: a parameter block by name (None when absent), as configured for this run.
        exists: whether a catalog entry's data exists.
        location: the local file or folder of a catalog entry (None: in memory or remote).
    """
    return [MissingInput(name, str(where) if (where := location(name)) else None, made_by[name])
            for name in _needed(pipeline, params, exists, location) if name in made_by and not exists(name)]


def pipelines_to_run(missing: list[MissingInput], pipelines: Mapping[str, Any], made_by: Mapping[str, str], *,
                     params: Params, exists: Exists, location: Location) -> list[str]:
    """The pipelines that make ``missing``, with those their own missing inputs need, in registry order."""
    order = [name for name in pipelines if name not in COMPOSITE_PIPELINES]
    wanted: set[str] = set()
    todo = [m.producer for m in missing]
    while todo:
        name = todo.pop()
        if name in wanted:
            continue
        wanted.add(name)
        todo += [m.producer for m in missing_inputs(pipelines[name], made_by, params=params, exists=exists,
                                                    location=location)]
    return sorted(wanted, key=order.index)


def missing_inputs_message(run: str, missing: list[MissingInput], to_run: list[str], env: str | None) -> str:
    """A few lines: what ``run`` lacks, which pipeline makes each, the commands in order, or plain ``kedro run``."""
    env_option = f" --env {env}" if env and env != "local" else ""
    by_producer: dict[str, list[MissingInput]] = {}
    for item in missing:
        by_producer.setdefault(item.producer, []).append(item)
    lines = [f"`{run}` reads what other pipelines make, and it is not there yet (nothing was run):"]
    for producer, items in sorted(by_producer.items(), key=lambda kv: to_run.index(kv[0]) if kv[0] in to_run else 0):
        where = next((i.location for i in items if i.location), None)
        lines.append(f"  - {', '.join(i.name for i in items)}{f' ({where})' if where else ''}: made by "
                     f"`kedro run --pipeline={producer}{env_option}`")
    lines.append("Make them first, in this order: " + ", then ".join(
        f"`kedro run --pipeline={name}{env_option}`" for name in to_run))
    lines.append(f"or run everything at once: `kedro run{env_option}`")
    return "\n".join(lines)
