"""An ablation table: one row per project run, what it changed against a baseline and what that bought.

``python -m defect_pipeline.benchmarks ablation --project P1 --project P2 ... [--baseline P1]
--doc docs/benchmarks.md`` reads each project's default run (the newest finished ``kedro run``
in its ``mlflow.db``; ``--project P@RUN_ID`` names another) and writes the ``ablation`` section.

Everything comes from the runs' MLflow records (:mod:`defect_pipeline.benchmarks.mlflow_store`),
nothing is typed by hand:

* **lever**: the parameters of the run that differ from the baseline run's — the dotted
  parameters the parent run logged (every block a node read, validated, defaults included), plus
  what ``auto`` resolved to in each stage (the stage runs' ``decoder`` / ``device`` /
  ``precision`` / ``input_mode`` tags). A parameter only one of the two runs logged (added to the
  project after the other ran) counts as the current default there, so it is a lever only when the
  value differs from that default. ``--ignore`` drops parameters that are not levers (globs);
* **val mIoU**: the selected checkpoint's — the stage the ``evaluate`` run used (its
  ``defect_pipeline.source_run_id``), at that stage's best epoch (``best_epoch``; ``best_step``
  with ``val_every_n_steps``), from the stage run's ``val_miou`` history;
* **test mIoU incl. background, test image accuracy**: the ``evaluate`` child run's ``test_miou`` /
  ``test_accuracy`` (``--thresholds tuned``, the delivered model) or ``test_fixed_*``. Test was
  read once per row, by that run's ``evaluate``; nothing here is chosen on it;
* **training minutes**: the stages' ``epoch_seconds`` summed; **training images/s**: the stages'
  per-epoch ``train_samples_per_s``, weighted by epoch time;
* the parent **MLflow run id**, and the **machine** the run recorded (tag ``defect_pipeline.machine``).
"""

from __future__ import annotations

import argparse
import fnmatch
import math
from dataclasses import dataclass
from pathlib import Path

from defect_pipeline.benchmarks import describe_machine, write_section
from defect_pipeline.config.registry import BLOCKS
from defect_pipeline.benchmarks.mlflow_store import (
    MACHINE_TAG,
    SOURCE_RUN_TAG,
    STAGE_TAG,
    RunRecord,
    RunRecordError,
    RunStore,
    store_path,
)
from defect_pipeline.markdown import markdown_table
from defect_pipeline.util import flatten

# stage-run tags that record what ``auto`` resolved to (tracking.runs.log_stage_result); the params keep "auto"
RESOLVED_TAGS = ("decoder", "device", "precision", "input_mode")
NOT_RECORDED = "–"


@dataclass(frozen=True)
class RunFigures:
    """What one row reports about a project's default run."""

    project: str
    run_id: str
    settings: dict[str, str]
    val_miou: float | None
    selected_stage: str | None
    test_miou: float | None
    test_accuracy: float | None
    test_split: str | None
    training_seconds: float
    images_per_s: float | None
    machine: str | None


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def run_settings(parent: RunRecord, stages: list[RunRecord]) -> dict[str, str]:
    """The run's parameters as dotted keys (a whole block logged as one text is left out: its fields are
    there one by one), plus ``<stage>.<tag> (resolved)`` for what ``auto`` became in each stage."""
    keys = set(parent.params)
    settings = {k: v for k, v in parent.params.items() if not any(o.startswith(k + ".") for o in keys)}
    for stage in stages:
        name = stage.tags.get(STAGE_TAG, stage.name)
        settings.update({f"{name}.{tag} (resolved)": stage.tags[tag] for tag in RESOLVED_TAGS if tag in stage.tags})
    return settings


def default_settings() -> dict[str, str]:
    """Every parameter block's defaults as the runs log them (dotted keys, values as text); a block that
    has no valid default (a required field) is left out."""
    defaults: dict[str, str] = {}
    for block, model in BLOCKS.items():
        try:
            dumped = model().model_dump(mode="json")
        except ValueError:
            continue
        defaults.update({key: str(value) for key, value in flatten(dumped, block).items()})
    return defaults


def lever(settings: dict[str, str], baseline: dict[str, str], ignore: list[str] = (),
          defaults: dict[str, str] | None = None) -> list[str]:
    """``key: baseline value → this value`` for every setting that differs; a block (first part of the key)
    that only one of the two runs has is one entry, ``stage3: only in this run`` / ``… not in this run``.
    A key that one run did not log stands for its value in ``defaults`` there (``unset`` if it has none)."""
    defaults = defaults or {}
    keys = [k for k in sorted(set(settings) | set(baseline)) if not any(fnmatch.fnmatch(k, p) for p in ignore)]
    blocks = {k.split(".", 1)[0] for k in keys}
    whole: dict[str, str] = {}
    for block in blocks:
        mine = any(k.split(".", 1)[0] == block for k in settings)
        theirs = any(k.split(".", 1)[0] == block for k in baseline)
        if mine != theirs:
            whole[block] = f"{block}: {'only in this run' if mine else 'not in this run'}"
    changes = [text for _, text in sorted(whole.items())]
    for key in keys:
        before, after = (side.get(key, defaults.get(key, "unset")) for side in (baseline, settings))
        if key.split(".", 1)[0] in whole or before == after:
            continue
        changes.append(f"{key}: {before} → {after}")
    return changes


def _val_at_selected_checkpoint(store: RunStore, stage: RunRecord) -> float | None:
    by_step = stage.params.get("val_every_n_steps", "null") not in ("null", "None", "")
    step = stage.metrics.get("best_step" if by_step else "best_epoch")
    if step is None or not math.isfinite(step):
        return None
    values = dict(store.metric_history(stage.run_id, "val_miou"))
    return _finite(values.get(int(step)))


def read_run(store: RunStore, project: str, run_id: str | None = None, *, thresholds: str = "tuned") -> RunFigures:
    """The figures of a row from a project's MLflow store."""
    parent = store.default_run(run_id)
    children = store.children(parent)
    stages = [c for c in children if c.kind == "stage"]
    evaluations = [c for c in children if c.kind == "evaluation" and c.status == "FINISHED"]
    evaluation = evaluations[-1] if evaluations else None
    by_id = {s.run_id: s for s in stages}
    selected = by_id.get(evaluation.tags.get(SOURCE_RUN_TAG, "")) if evaluation else None
    selected = selected or (stages[-1] if stages else None)
    prefix = "test_" if thresholds == "tuned" else "test_fixed_"
    seconds, weighted = 0.0, 0.0
    for stage in stages:
        times = dict(store.metric_history(stage.run_id, "epoch_seconds"))
        rates = dict(store.metric_history(stage.run_id, "train_samples_per_s"))
        seconds += sum(v for v in times.values() if math.isfinite(v))
        weighted += sum(times[s] * rates[s] for s in times if s in rates and math.isfinite(times[s] * rates[s]))
    return RunFigures(
        project=project, run_id=parent.run_id, settings=run_settings(parent, stages),
        val_miou=_val_at_selected_checkpoint(store, selected) if selected else None,
        selected_stage=selected.tags.get(STAGE_TAG, selected.name) if selected else None,
        test_miou=_finite(evaluation.metrics.get(f"{prefix}miou")) if evaluation else None,
        test_accuracy=_finite(evaluation.metrics.get(f"{prefix}accuracy")) if evaluation else None,
        test_split=evaluation.params.get("evaluation.split", "test") if evaluation else None,
        training_seconds=seconds, images_per_s=weighted / seconds if seconds > 0 else None,
        machine=parent.tags.get(MACHINE_TAG))


def parse_project(text: str) -> tuple[str, str | None]:
    """``path`` or ``path@RUN_ID``."""
    path, _, run_id = text.rpartition("@") if "@" in text else (text, "", "")
    return path, run_id or None


def _pct(value: float | None) -> str:
    return NOT_RECORDED if value is None else f"{100 * value:.1f} %"


def render(rows: list[RunFigures], baseline: RunFigures, *, ignore: list[str], thresholds: str,
           command: str, title: str) -> str:
    """The ``ablation`` section."""
    scored = [r for r in rows if r.val_miou is not None]
    best_val = max(scored, key=lambda r: r.val_miou) if scored else None
    table, defaults = [], default_settings()
    for row in rows:
        changes = ["baseline"] if row is baseline else (lever(row.settings, baseline.settings, ignore, defaults) or
                                                        ["nothing (same parameters as the baseline)"])
        off_test = row.test_split not in (None, "test")
        table.append([
            "; ".join(changes), row.project,
            _pct(row.val_miou) + (" ★" if row is best_val else ""),
            _pct(row.test_miou) + (f" ({row.test_split} split!)" if off_test else ""),
            _pct(row.test_accuracy),
            f"{row.training_seconds / 60:.1f}", NOT_RECORDED if row.images_per_s is None else f"{row.images_per_s:.1f}",
            f"`{row.run_id}`", row.machine or "not recorded"])
    point = "tuned on val" if thresholds == "tuned" else "fixed (0.5, argmax)"
    return "\n".join([
        f"## {title}: ablation (one row per change against the baseline)",
        "",
        f"Produced by `{command}` on {describe_machine()}, from each run's MLflow records. Lever: the parameters "
        "that differ from the baseline run's (logged by the run, defaults included; one a run did not log counts "
        "as today's default; `(resolved)`: what `auto` became in a stage)" + (f"; not compared: {', '.join(f'`{p}`' for p in ignore)}" if ignore else "") + ".",
        "",
        markdown_table(["lever (vs baseline)", "project", "val mIoU", "test mIoU incl. background",
                        "test image accuracy", "training min", "training images/s", "MLflow run", "machine"], table),
        "",
        "- Choices are made on val: each row's checkpoint is its stage's best epoch on val "
        "(`early_stopping.monitor`) and its thresholds are tuned on val; ★ marks the best val mIoU. Test was read "
        "once per row, by that run's `evaluate`, and is not used to choose anything here; the rows keep the order "
        "they were given in.",
        f"- val mIoU: the selected checkpoint's (the stage `evaluate` used, at its best epoch), argmax at the "
        f"model's input size during training. Test: `evaluate` at each image's own size, thresholds {point}.",
        "- Training minutes: the stages' epoch times summed; training images/s: their per-epoch training "
        "throughput weighted by epoch time. Machine: as the run recorded it (tag `defect_pipeline.machine`); "
        "`not recorded` for runs made before runs recorded it.",
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m defect_pipeline.benchmarks ablation")
    parser.add_argument("--project", action="append", required=True,
                        help="project folder of one run (its mlflow.db), or PATH@RUN_ID; repeat, one per row")
    parser.add_argument("--baseline", default=None, help="the --project value the levers are measured against "
                                                         "(default: the first)")
    parser.add_argument("--ignore", action="append", default=[],
                        help="parameter glob that is not a lever (e.g. 'data.check.*'); repeatable")
    parser.add_argument("--thresholds", choices=["tuned", "fixed"], default="tuned",
                        help="test metrics at the tuned (delivered) or fixed thresholds")
    parser.add_argument("--title", default="NEU-Seg (CPU)")
    parser.add_argument("--doc", default="docs/benchmarks.md")
    args = parser.parse_args(argv)
    baseline_name = args.baseline or args.project[0]
    if baseline_name not in args.project:
        raise SystemExit(f"ablation: --baseline {baseline_name} is not one of the --project values "
                         f"({', '.join(args.project)}); give it as one of them")
    rows = []
    for text in args.project:
        path, run_id = parse_project(text)
        try:
            with RunStore(store_path(Path(path))) as store:
                rows.append(read_run(store, path, run_id, thresholds=args.thresholds))
        except RunRecordError as error:
            raise SystemExit(f"ablation: {error}") from None
    baseline = rows[args.project.index(baseline_name)]
    command = "python -m defect_pipeline.benchmarks ablation " + " ".join(
        [f"--project {p}" for p in args.project] + ([f"--baseline {args.baseline}"] if args.baseline else [])
        + [f"--ignore '{p}'" for p in args.ignore]
        + ([f"--thresholds {args.thresholds}"] if args.thresholds != "tuned" else []))
    body = render(rows, baseline, ignore=args.ignore, thresholds=args.thresholds, command=command, title=args.title)
    write_section(Path(args.doc), "ablation", body)
    print(body)


if __name__ == "__main__":
    main()
