"""Test-split metrics of a stage checkpoint with argmax decisions, and the training wall time.

The ``evaluate`` pipeline (and the ``evaluation`` benchmark) report the same metrics at fixed and
tuned thresholds; this one reads a checkpoint directly and adds the training time.

Loads a stage checkpoint (model, label space and configuration are in it), runs it over the
accepted ``test`` rows of the manifest with the validation transform, and reports mIoU with and
without background, per-class IoU, image accuracy and macro F1 — the way NEU-Seg results are
published (mIoU over the 4 classes including background) — plus the training wall time summed
from the stages' histories. Where the weights started and how many torch threads training used
come from the run's own records (:mod:`defect_pipeline.benchmarks.recorded`).

``python -m defect_pipeline.benchmarks test_metrics --project <project dir> --root <raw root> --title
"NEU-Seg (CPU)" --json docs/results/neu_seg.json`` writes the section ``test_metrics`` of
docs/benchmarks.md and, with ``--json``, the same headline figures as JSON (mIoU incl. background and
over the defects, IoU per class, image accuracy, training minutes, the training command, git commit,
MLflow run id and machine). The MLflow run is the project's default run (the newest finished ``kedro
run`` in its ``mlflow.db``, or ``--run-id``), checked against the reported stage's training summary;
the section and the JSON are rendered from one dict, so they cannot disagree.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from defect_pipeline.benchmarks import describe_machine, write_section
from defect_pipeline.benchmarks.mlflow_store import MACHINE_TAG, STAGE_TAG, RunRecordError, RunStore, store_path
from defect_pipeline.benchmarks.recorded import threads_used, weights_lineage


def evaluate_checkpoint(checkpoint: Path, manifest: pd.DataFrame, root: str, *, split: str = "test",
                        batch_size: int = 32, tta: tuple[str, ...] = ()) -> dict[str, float]:
    """Metrics of ``checkpoint`` on ``split`` (threshold-free: argmax classes, argmax pixels); ``tta``: test-time
    flips whose probabilities are averaged with the plain view's before the argmax, as the Predictor does."""
    from defect_pipeline.ml.augment import build_transform
    from defect_pipeline.ml.checkpoint import safe_torch_load
    from defect_pipeline.ml.dataset import ManifestDataset, create_dataloader
    from defect_pipeline.ml.labels import LabelSpace
    from defect_pipeline.ml.metrics import MultitaskMetrics
    from defect_pipeline.ml.package import ModelPackage
    from defect_pipeline.ml.predict import Predictor

    state = safe_torch_load(checkpoint)
    labels = LabelSpace.from_dict(state["labels"])
    meta = state["model_meta"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        predictor = Predictor(ModelPackage.from_checkpoint(state, source=str(checkpoint)), tta=tta)
    dataset = ManifestDataset(manifest, root=root, split=split, labels=labels, seg_mode=meta["seg_mode"],
                              transform=build_transform([], image_size=meta["image_size"], train=False))
    loader = create_dataloader(dataset, batch_size=batch_size, shuffle=False, num_workers=0, seed=0)
    metrics = MultitaskMetrics(labels, meta["seg_mode"])
    start = time.perf_counter()
    with torch.no_grad():
        for batch in loader:
            seg, cls = predictor.input_size_probabilities(batch["image"])
            # argmax decisions: the probabilities rank like logits (binary: p > 0.5 is logit > 0)
            metrics.update(seg - 0.5 if meta["seg_mode"] == "binary" else seg, cls, batch["mask"], batch["label"])
    result = metrics.compute()
    result["images"] = len(dataset)
    result["images_per_s"] = len(dataset) / (time.perf_counter() - start)
    return result


def recorded_run(project: Path, stage: str, summary: dict[str, Any], *, run_id: str | None = None,
                 tracking_uri: str | None = None) -> dict[str, Any]:
    """The MLflow parent run that trained the reported checkpoint: the project's default run (newest finished
    ``kedro run``, or ``run_id``), checked against the stage's ``training_summary.json`` (same best epoch and
    epochs run), with its git commit and command line from the run's tags."""
    with RunStore(store_path(project, tracking_uri)) as store:
        parent = store.default_run(run_id)
        stages = [c for c in store.children(parent) if c.kind == "stage" and c.tags.get(STAGE_TAG) == stage]
    if not stages:
        raise RunRecordError(f"MLflow run {parent.run_id} of {project} has no {stage} stage run: the checkpoint in "
                             f"data/06_models/{stage} is not from it; pass --run-id of the run that trained it")
    as_int = lambda v: None if v is None else int(v)  # noqa: E731
    recorded = {k: as_int(stages[-1].metrics.get(k)) for k in ("best_epoch", "epochs_run")}
    expected = {k: as_int(summary.get(k)) for k in recorded}
    if any(v is not None and expected[k] is not None and v != expected[k] for k, v in recorded.items()):
        raise RunRecordError(
            f"MLflow run {parent.run_id}'s {stage} recorded best epoch {recorded['best_epoch']} of "
            f"{recorded['epochs_run']}, data/08_reporting/{stage}/training_summary.json says {expected['best_epoch']} "
            f"of {expected['epochs_run']}: the data folder holds another run's results; pass --run-id of that run")
    command = parent.tags.get("command_line", "").split()
    return {"run_id": parent.run_id, "git_commit": parent.tags.get("git.commit") or git_commit(project),
            "git_dirty": parent.tags.get("git.dirty", "unknown"),
            "command": " ".join([Path(command[0]).name, *command[1:]]) if command else None,
            "machine": parent.tags.get(MACHINE_TAG)}


def package_tta(folder: Path) -> tuple[str, ...]:
    """The test-time flips a tuned model package predicts with (``model.json`` ``tta``); none without one."""
    from defect_pipeline.ml.package import MODEL_FILE

    model_json = folder / MODEL_FILE
    if not model_json.is_file():
        return ()
    return tuple(json.loads(model_json.read_text()).get("tta") or ())


def git_commit(project: Path) -> str:
    """The project's git HEAD (for a run that did not record ``git.commit``)."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True,
                              timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return "unknown (not recorded by the run; the project is not a git checkout)"
    return done.stdout.strip()


def headline(result: dict[str, float], *, training_seconds: float, command: str, run: dict[str, Any] | None,
             machine: str, tta: tuple[str, ...] = ()) -> dict[str, Any]:
    """The headline result as ``docs/results/<name>.json`` holds it and the section shows it: fractions to
    4 decimals (the section prints them as percentages with 2), minutes to 1. ``machine``: the one this
    command runs on, used when the run did not record the machine it trained on."""
    frac = lambda v: round(float(v), 4)  # noqa: E731
    return {
        "miou_incl_bg": frac(result["miou"]), "miou_defects": frac(result["miou_defects"]),
        "iou": {k[len("iou/"):]: frac(v) for k, v in result.items() if k.startswith("iou/")},
        "image_accuracy": frac(result["accuracy"]), "image_macro_f1": frac(result["macro_f1"]),
        "test_images": int(result["images"]),
        "training_minutes": round(training_seconds / 60, 1), "test_time_flips": list(tta), "command": command,
        "git_commit": run["git_commit"] if run else None, "git_dirty": run["git_dirty"] if run else None,
        "mlflow_run_id": run["run_id"] if run else None,
        "machine": (run or {}).get("machine") or machine,
        "machine_source": "recorded by the training run" if (run or {}).get("machine") else
        "the machine this command ran on (the training run did not record one)",
    }


def render(head: dict[str, Any], *, title: str, measured_by: str, summary: dict[str, Any], lineage: str,
           threads: str, epochs: list[str], stage: str, wall_seconds: float | None) -> str:
    """The ``test_metrics`` section; every figure of the headline comes from ``head`` (what the JSON holds)."""
    pct = lambda v: f"{100 * v:.2f}"  # noqa: E731
    run = (f" MLflow run `{head['mlflow_run_id']}` (git commit `{head['git_commit']}`"
           f"{', uncommitted changes' if head['git_dirty'] == 'true' else ''})." if head["mlflow_run_id"] else "")
    return "\n".join([
        f"## {title}: test-set metrics",
        "",
        f"Trained by `{head['command']}` and measured by `{measured_by}`. Machine: {head['machine']} "
        f"({head['machine_source']}).{run} Model: {summary['backbone']} + {summary['decoder']}; initial weights: "
        f"{lineage}. Trained with {threads} per process, epochs: {', '.join(epochs)}, training precision "
        f"{summary.get('precision', 'fp32')} "
        f"(`precision: auto` measures the CPU). Checkpoint: {stage} best (epoch {summary['best_epoch']}, "
        f"{summary['monitor']} {summary['best_metric']:.4f} on val). Argmax decisions at the model's input size "
        + (f"on the plain view averaged with the test-time flips {', '.join(head['test_time_flips'])} (the tuned "
           "model's `thresholds.tta`) " if head.get("test_time_flips") else "")
        + "(the `evaluation` section below measures at each image's own size, fixed and tuned).",
        "",
        "| metric | test |",
        "|---|---|",
        f"| mIoU incl. background (published NEU-Seg metric) | **{pct(head['miou_incl_bg'])} %** |",
        f"| mIoU over defect classes | {pct(head['miou_defects'])} % |",
        *(f"| IoU {name} | {pct(value)} % |" for name, value in head["iou"].items()),
        f"| image accuracy | {pct(head['image_accuracy'])} % |",
        f"| image macro F1 | {pct(head['image_macro_f1'])} % |",
        f"| test images | {head['test_images']} |",
        "",
        f"- Training wall time (sum of the stages' epochs): {head['training_minutes']:.1f} min"
        + (f"; whole command incl. data checks: {wall_seconds / 60:.1f} min." if wall_seconds else "."),
        "- Published references (mIoU incl. background, pretrained backbones, GPU): PGA-Net 82.15 %, FDSNet 78.8 %.",
    ])


def main(argv: list[str] | None = None) -> None:
    """Evaluate the last stage's best checkpoint of a project run; update docs/benchmarks.md (and the JSON)."""
    parser = argparse.ArgumentParser(prog="python -m defect_pipeline.benchmarks test_metrics")
    parser.add_argument("--project", default=".", help="project folder whose data root holds the run")
    parser.add_argument("--data-root", default="data", help="the run's data root below --project: data (default environment), data/neu_seg (--env neu_seg)")
    parser.add_argument("--root", required=True, help="raw root the manifest's paths are relative to")
    parser.add_argument("--stages", nargs="+", default=["stage1", "stage2", "stage3"])
    parser.add_argument("--title", default="test split")
    parser.add_argument("--command", default=None,
                        help="the command that trained it (default: the run's recorded command line)")
    parser.add_argument("--wall-seconds", type=float, default=None, help="measured wall time of that command")
    parser.add_argument("--json", default=None, help="also write the headline result there, e.g. "
                                                     "docs/results/neu_seg.json (needs the project's MLflow run)")
    parser.add_argument("--run-id", default=None, help="the MLflow parent run that trained the checkpoint "
                                                       "(default: the newest finished `kedro run`)")
    parser.add_argument("--tracking-uri", default=None, help="sqlite:///<file> (default: <project>/mlflow.db)")
    parser.add_argument("--tta", nargs="*", choices=["hflip", "vflip"], default=None,
                        help="test-time flips (default: the tuned model's, 06_models/tuned/model.json `tta`, "
                             "i.e. the run's thresholds.tta; none when it has none)")
    parser.add_argument("--doc", default="docs/benchmarks.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    project = Path(args.project)
    last_stage = args.stages[-1]
    summary = json.loads((project / args.data_root / f"08_reporting/{last_stage}/training_summary.json").read_text())
    has_store = args.json or args.run_id or args.tracking_uri or (project / "mlflow.db").is_file()
    try:
        run = recorded_run(project, last_stage, summary, run_id=args.run_id, tracking_uri=args.tracking_uri) \
            if has_store else None
    except RunRecordError as error:
        raise SystemExit(f"test_metrics: {error}") from None
    manifest = pd.read_parquet(project / args.data_root / "03_primary/manifest.parquet")
    tta = tuple(args.tta) if args.tta is not None else package_tta(project / args.data_root / "06_models/tuned")
    result = evaluate_checkpoint(project / args.data_root / f"06_models/{last_stage}/best.pt", manifest, args.root,
                                 tta=tta)
    training_seconds, epochs, threads = 0.0, [], []
    for stage in args.stages:
        history = pd.read_csv(project / args.data_root / f"08_reporting/{stage}/history.csv")
        training_seconds += float(history["epoch_seconds"].sum())
        epochs.append(f"{stage} {len(history)}")
        threads.extend(history["cpu_threads"] if "cpu_threads" in history.columns else [])
    command = args.command or (run or {}).get("command") or "kedro run --env neu_seg"
    head = headline(result, training_seconds=training_seconds, command=command, run=run, machine=describe_machine(),
                    tta=tta)
    measured_by = " ".join(["python -m defect_pipeline.benchmarks test_metrics", f"--project {args.project}",
                            *([f"--data-root {args.data_root}"] if str(args.data_root) != "data" else []),
                            f"--root {args.root}", *([f"--json {args.json}"] if args.json else []),
                            *(["--tta", *args.tta] if args.tta is not None else [])])
    body = render(head, title=args.title, measured_by=measured_by, summary=summary,
                  lineage=weights_lineage(project, last_stage, args.data_root), threads=threads_used(threads),
                  epochs=epochs, stage=last_stage, wall_seconds=args.wall_seconds)
    write_section(Path(args.doc), "test_metrics", body)
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({**head, "measured_by": measured_by}, indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)
    print(body)


if __name__ == "__main__":
    main()
