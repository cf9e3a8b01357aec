"""Test-split metrics of a stage checkpoint with argmax decisions, and the training wall time.

The ``evaluate`` pipeline (and the ``evaluation`` benchmark) report the same metrics at fixed and
tuned thresholds; this one reads a checkpoint directly and adds the training time.

Loads a stage checkpoint (model, label space and configuration are in it), runs it over the
accepted ``test`` rows of the manifest with the validation transform, and reports mIoU with and
without background, per-class IoU, image accuracy and macro F1 — the way NEU-Seg results are
published (mIoU over the 4 classes including background) — plus the training wall time summed
from the stages' histories. Where the weights started and how many torch threads training used
come from the run's own records (:mod:`defect_pipeline.benchmarks.recorded`).

``python -m defect_pipeline.benchmarks test_metrics --project <project dir> --stages stage1 stage2
stage3 --title "NEU-Seg (CPU)"`` writes the section ``test_metrics`` of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import pandas as pd
import torch

from defect_pipeline.benchmarks import describe_machine, write_section
from defect_pipeline.benchmarks.recorded import threads_used, weights_lineage


def evaluate_checkpoint(checkpoint: Path, manifest: pd.DataFrame, root: str, *, split: str = "test",
                        batch_size: int = 32) -> dict[str, float]:
    """Metrics of ``checkpoint`` on ``split`` (threshold-free: argmax classes, argmax pixels)."""
    from defect_pipeline.ml.augment import build_transform
    from defect_pipeline.ml.checkpoint import safe_torch_load
    from defect_pipeline.ml.dataset import ManifestDataset, create_dataloader
    from defect_pipeline.ml.labels import LabelSpace
    from defect_pipeline.ml.metrics import MultitaskMetrics
    from defect_pipeline.ml.models import create_model

    state = safe_torch_load(checkpoint)
    labels = LabelSpace.from_dict(state["labels"])
    meta = state["model_meta"]
    model_cfg = state["config"]["model"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = create_model(meta["backbone"], num_image_classes=labels.num_image_classes,
                             num_seg_classes=labels.num_seg_classes, seg_mode=meta["seg_mode"],
                             decoder=meta["decoder"], decoder_channels=model_cfg["decoder_channels"],
                             image_size=meta["image_size"])
    model.load_state_dict(state["model"])
    model.eval()
    dataset = ManifestDataset(manifest, root=root, split=split, labels=labels, seg_mode=meta["seg_mode"],
                              transform=build_transform([], image_size=meta["image_size"], train=False))
    loader = create_dataloader(dataset, batch_size=batch_size, shuffle=False, num_workers=0, seed=0)
    metrics = MultitaskMetrics(labels, meta["seg_mode"])
    start = time.perf_counter()
    with torch.no_grad():
        for batch in loader:
            out = model(batch["image"])
            metrics.update(out.seg_logits, out.cls_logits, batch["mask"], batch["label"])
    result = metrics.compute()
    result["images"] = len(dataset)
    result["images_per_s"] = len(dataset) / (time.perf_counter() - start)
    return result


def main(argv: list[str] | None = None) -> None:
    """Evaluate the last stage's best checkpoint of a project run and update docs/benchmarks.md."""
    parser = argparse.ArgumentParser(prog="python -m defect_pipeline.benchmarks test_metrics")
    parser.add_argument("--project", default=".", help="project folder whose data/ holds the run")
    parser.add_argument("--root", required=True, help="raw root the manifest's paths are relative to")
    parser.add_argument("--stages", nargs="+", default=["stage1", "stage2", "stage3"])
    parser.add_argument("--title", default="test split")
    parser.add_argument("--command", default="kedro run --env neu_seg", help="the command that trained it")
    parser.add_argument("--wall-seconds", type=float, default=None, help="measured wall time of that command")
    parser.add_argument("--doc", default="docs/benchmarks.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    project = Path(args.project)
    manifest = pd.read_parquet(project / "data/03_primary/manifest.parquet")
    last_stage = args.stages[-1]
    result = evaluate_checkpoint(project / f"data/06_models/{last_stage}/best.pt", manifest, args.root)
    training_seconds, epochs, threads = 0.0, [], []
    for stage in args.stages:
        history = pd.read_csv(project / f"data/08_reporting/{stage}/history.csv")
        training_seconds += float(history["epoch_seconds"].sum())
        epochs.append(f"{stage} {len(history)}")
        threads.extend(history["cpu_threads"] if "cpu_threads" in history.columns else [])
    summary = json.loads((project / f"data/08_reporting/{last_stage}/training_summary.json").read_text())
    per_class = [k for k in result if k.startswith("iou/")]
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    body = "\n".join([
        f"## {args.title}: test-set metrics",
        "",
        f"Trained by `{args.command}` and measured by `python -m defect_pipeline.benchmarks test_metrics "
        f"--project {args.project} --root {args.root}` on {describe_machine()}. Model: {summary['backbone']} + "
        f"{summary['decoder']}; initial weights: {weights_lineage(project, last_stage)}. Trained with "
        f"{threads_used(threads)} per process, epochs: {', '.join(epochs)}, training precision "
        f"{summary.get('precision', 'fp32')} "
        f"(`precision: auto` measures the CPU). Checkpoint: {last_stage} best (epoch {summary['best_epoch']}, "
        f"{summary['monitor']} {summary['best_metric']:.4f} on val). Argmax decisions at the model's input size "
        "(the `evaluation` section below measures at each image's own size, fixed and tuned).",
        "",
        "| metric | test |",
        "|---|---|",
        f"| mIoU incl. background (published NEU-Seg metric) | **{pct(result['miou'])} %** |",
        f"| mIoU over defect classes | {pct(result['miou_defects'])} % |",
        *(f"| IoU {k[4:]} | {pct(result[k])} % |" for k in per_class),
        f"| image accuracy | {pct(result['accuracy'])} % |",
        f"| image macro F1 | {pct(result['macro_f1'])} % |",
        f"| test images | {result['images']} |",
        "",
        f"- Training wall time (sum of the stages' epochs): {training_seconds / 60:.1f} min"
        + (f"; whole command incl. data checks: {args.wall_seconds / 60:.1f} min." if args.wall_seconds else "."),
        "- Published references (mIoU incl. background, pretrained backbones, GPU): PGA-Net 82.15 %, FDSNet 78.8 %.",
    ])
    write_section(Path(args.doc), "test_metrics", body)
    print(body)


if __name__ == "__main__":
    main()
