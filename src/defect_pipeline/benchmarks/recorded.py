"""The sentences of a benchmark section that describe how the reported run was set up, from what it recorded.

A section must not print a fixed claim ("random initialisation", a thread count copied from the
docs) whatever the run did. These helpers read the run's own records in a project folder:

* where each stage's weights started: ``data/08_reporting/<stage>/training_summary.json`` →
  ``initial_weights`` (``init_from`` and the ``model.pretrained`` / ``model.checkpoint_path``
  applied); a summary written before that key existed falls back to the stage checkpoint's
  ``init_from`` and ``config.model``. A stage that started from another stage's ``best.pt`` is
  followed back to the stage that started from scratch (or from a file, or resumed);
* the torch CPU threads training ran with: the history's ``cpu_threads`` column (also the
  summary's ``cpu_threads``).

A setting the run did not record is said to be unrecorded, never guessed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REPORTING = "08_reporting"
#: the default environment's data root below the project (``--env neu_seg`` writes below ``data/neu_seg``)
DATA_ROOT = "data"


def read_training_summary(project: Path, stage: str, data_root: str = DATA_ROOT) -> dict[str, Any] | None:
    """``<project>/<data_root>/08_reporting/<stage>/training_summary.json``, or None when there is none."""
    path = Path(project) / data_root / REPORTING / stage / "training_summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


def initial_weights_of(summary: dict[str, Any], project: Path) -> dict[str, Any]:
    """The summary's ``initial_weights``; for an older summary, rebuilt from its best checkpoint."""
    from defect_pipeline.ml.stage_records import describe_initial_weights

    if "initial_weights" in summary:
        return summary["initial_weights"]
    init_from = str(summary.get("init_from", "unknown"))
    if init_from != "scratch":
        return {"init_from": init_from, "description": describe_initial_weights(init_from, pretrained=False,
                                                                                checkpoint_path=None)}
    model = _checkpoint_model_config(summary, Path(project))
    if model is None:
        return {"init_from": init_from, "description": "scratch (whether model.pretrained or model.checkpoint_path "
                                                       "was set is not recorded)"}
    pretrained, checkpoint_path = bool(model.get("pretrained")), model.get("checkpoint_path")
    return {"init_from": init_from, "pretrained": pretrained, "checkpoint_path": checkpoint_path,
            "description": describe_initial_weights(init_from, pretrained=pretrained, checkpoint_path=checkpoint_path)}


def _checkpoint_model_config(summary: dict[str, Any], project: Path) -> dict[str, Any] | None:
    from defect_pipeline.ml.checkpoint import CheckpointError, safe_torch_load

    for key in ("best_checkpoint", "last_checkpoint"):
        if not summary.get(key):
            continue
        path = Path(summary[key])
        path = path if path.is_absolute() else project / path
        try:
            return safe_torch_load(path).get("config", {}).get("model")
        except CheckpointError:
            continue
    return None


def _previous_stage(project: Path, init_from: str, data_root: str = DATA_ROOT) -> str | None:
    """The stage of this project whose ``best.pt`` ``init_from`` names, if it is one."""
    path = Path(init_from)
    if path.name != "best.pt" or read_training_summary(project, path.parent.name, data_root) is None:
        return None
    return path.parent.name


def weights_lineage(project: Path, stage: str, data_root: str = DATA_ROOT) -> str:
    """Where ``stage``'s weights came from, back to the first stage, e.g. ``stage1 from random
    initialisation (…); stage2 from stage1's best checkpoint; stage3 from stage2's best checkpoint``."""
    steps: list[str] = []
    seen: set[str] = set()
    while stage not in seen:
        seen.add(stage)
        summary = read_training_summary(project, stage, data_root)
        if summary is None:
            steps.append(f"{stage} from weights not recorded (no {data_root}/{REPORTING}/{stage}/training_summary.json)")
            break
        init = initial_weights_of(summary, Path(project))
        previous = _previous_stage(Path(project), str(init.get("init_from", "")), data_root)
        if previous is None or previous in seen:
            steps.append(f"{stage} from {init['description']}")
            break
        steps.append(f"{stage} from {previous}'s best checkpoint")
        stage = previous
    return "; ".join(reversed(steps))


def threads_used(values: Iterable[Any]) -> str:
    """``"1 torch thread"``/``"4 torch threads"`` when every recorded value agrees, all of them when
    they differ, ``"torch threads not recorded"`` when none is."""
    recorded = sorted({int(v) for v in values if v is not None and v == v})  # v == v: not NaN
    if not recorded:
        return "torch threads not recorded"
    if len(recorded) == 1:
        return f"{recorded[0]} torch thread{'s' if recorded[0] != 1 else ''}"
    return f"{' / '.join(map(str, recorded))} torch threads (it changed between runs)"
