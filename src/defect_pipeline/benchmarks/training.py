"""Benchmark of the training engine against a bare PyTorch loop, and of data vs model speed.

On the same model, batch size, data and thread count, measured in one run:

* **engine**: :func:`defect_pipeline.ml.engine.train` for one epoch capped at ``--batches``
  batches (with everything it does per step: dropout schedule, finiteness check, clipping, LR
  schedule, progress bar off), minus its validation pass;
* **bare loop**: the textbook ``forward → loss → backward → step`` over the same loader;
* **data loader alone**: iterating the loader without a model;
* **model step alone**: forward/backward/step on one pre-loaded batch repeated.

``python -m defect_pipeline.benchmarks training --root ../shared/datasets/neu_seg --manifest
data/03_primary/manifest.parquet --classes inclusion patches scratches`` writes the section
``training`` of docs/benchmarks.md. The manifest must come from the data pipeline on that root.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import pandas as pd
import torch

from defect_pipeline.benchmarks import describe_machine, write_section
from defect_pipeline.ml.memory import peak_rss_mb


def _setup(manifest: pd.DataFrame, root: str, classes: list[str], *, backbone: str, image_size: int,
           batch_size: int, num_workers: int):
    from defect_pipeline.ml.augment import build_transform
    from defect_pipeline.ml.dataset import ManifestDataset, create_dataloader, labels_from_manifest
    from defect_pipeline.ml.losses import ClassificationLoss, MultitaskLoss, SegmentationLoss
    from defect_pipeline.ml.models import create_model

    labels = labels_from_manifest(manifest, defect_classes=classes, good_label="good")
    recipe = [{"name": "HorizontalFlip", "p": 0.5}]
    train_set = ManifestDataset(manifest, root=root, split="train", labels=labels,
                                transform=build_transform(recipe, image_size=image_size, train=True, seed=0))
    val_set = ManifestDataset(manifest.head(0), root=root, split="val", labels=labels,
                              transform=build_transform(recipe, image_size=image_size, train=False))
    loader = create_dataloader(train_set, batch_size=batch_size, shuffle=True, num_workers=num_workers, seed=0,
                               drop_last=True)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = create_model(backbone, num_image_classes=labels.num_image_classes,
                             num_seg_classes=labels.num_seg_classes, decoder_channels=32)
    loss_fn = MultitaskLoss(ClassificationLoss(labels.num_image_classes), SegmentationLoss("multiclass"))
    return labels, model, loss_fn, loader, val_set


def _bare_loop(model, loss_fn, loader, batches: int) -> float:
    optimizer = torch.optim.AdamW(list(model.parameters()) + list(loss_fn.parameters()), lr=1e-3)
    model.train()
    seen, start = 0, time.perf_counter()
    for index, batch in enumerate(loader):
        if index >= batches:
            break
        out = model(batch["image"])
        loss = loss_fn(out.seg_logits, out.cls_logits, batch["mask"], batch["label"], step=index, total_steps=batches)
        optimizer.zero_grad(set_to_none=True)
        loss.total.backward()
        optimizer.step()
        seen += batch["image"].shape[0]
    return seen / (time.perf_counter() - start)


def _engine(model, loss_fn, loader, val_set, labels, batches: int) -> float:
    from defect_pipeline.ml.checkpoint import CheckpointStore
    from defect_pipeline.ml.dataset import create_dataloader
    from defect_pipeline.ml.engine import EngineConfig, train
    from defect_pipeline.ml.metrics import MultitaskMetrics

    config = EngineConfig(epochs=1, lr=1e-3, backbone_lr=1e-3, weight_decay=0.01, max_batches_per_epoch=batches,
                          progress=False, seed=0)
    meta = {"stage": "bench", "model_meta": {"backbone": "x", "decoder": "x", "seg_mode": "multiclass"},
            "labels": labels.to_dict(), "config": {}, "manifest_hash": ""}
    # an empty validation loader: the comparison is about the training step only
    val_loader = create_dataloader(val_set, batch_size=1, shuffle=False, num_workers=0, seed=0)
    with tempfile.TemporaryDirectory() as folder:
        result = train(model, loss_fn, loader, val_loader, metrics=MultitaskMetrics(labels, "multiclass"),
                       config=config, store=CheckpointStore(folder), meta=meta)
    return result.history[-1]["train_samples_per_s"]


def _loader_only(loader, batches: int) -> float:
    seen, start = 0, time.perf_counter()
    for index, batch in enumerate(loader):
        if index >= batches:
            break
        seen += batch["image"].shape[0]
    return seen / (time.perf_counter() - start)


def _model_only(model, loss_fn, loader, batches: int) -> float:
    batch = next(iter(loader))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    start = time.perf_counter()
    for index in range(batches):
        out = model(batch["image"])
        loss = loss_fn(out.seg_logits, out.cls_logits, batch["mask"], batch["label"], step=index, total_steps=batches)
        optimizer.zero_grad(set_to_none=True)
        loss.total.backward()
        optimizer.step()
    return batches * batch["image"].shape[0] / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and update docs/benchmarks.md."""
    parser = argparse.ArgumentParser(prog="python -m defect_pipeline.benchmarks training")
    parser.add_argument("--root", required=True)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--classes", nargs="+", required=True)
    parser.add_argument("--backbone", default="convnext_atto")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--doc", default="docs/benchmarks.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    manifest = pd.read_parquet(args.manifest)
    setup = dict(backbone=args.backbone, image_size=args.image_size, batch_size=args.batch_size,
                 num_workers=args.num_workers)
    results = {}
    # the same seeds, a fresh model each time; warm-up of a few batches first
    for name in ("bare loop", "engine", "bare loop (again)"):
        labels, model, loss_fn, loader, val_set = _setup(manifest, args.root, args.classes, **setup)
        _model_only(model, loss_fn, loader, 2)
        if name.startswith("bare"):
            results[name] = _bare_loop(model, loss_fn, loader, args.batches)
        else:
            results[name] = _engine(model, loss_fn, loader, val_set, labels, args.batches)
    labels, model, loss_fn, loader, val_set = _setup(manifest, args.root, args.classes, **setup)
    loader_rate = _loader_only(loader, args.batches)
    model_rate = _model_only(model, loss_fn, loader, args.batches)
    bare = (results["bare loop"] + results["bare loop (again)"]) / 2
    peak = peak_rss_mb()
    body = "\n".join([
        "## Training engine vs a bare PyTorch loop",
        "",
        f"Produced by `python -m defect_pipeline.benchmarks training --root {args.root} --manifest {args.manifest} "
        f"--classes {' '.join(args.classes)}` (defaults: {args.backbone} + FPN, {args.image_size} px, batch "
        f"{args.batch_size}, {args.batches} batches, {args.num_workers} loader worker(s), {args.threads} torch "
        f"thread(s)) on {describe_machine()}. All figures from one invocation.",
        "",
        "| measurement | samples/s |",
        "|---|---|",
        f"| bare PyTorch loop (mean of a run before and after the engine) | {bare:.1f} |",
        f"| pipeline engine (`ml.engine.train`) | {results['engine']:.1f} |",
        f"| data loader alone | {loader_rate:.1f} |",
        f"| model step alone (one cached batch) | {model_rate:.1f} |",
        "",
        f"- Engine / bare loop: **{results['engine'] / bare:.2f}** (goal ≥ 0.95); the two bare runs differ by "
        f"{abs(results['bare loop'] - results['bare loop (again)']) / bare:.0%} (machine noise).",
        f"- Data loader / model step: **{loader_rate / model_rate:.2f}** (above 1: the model, not the data, "
        "limits training).",
        f"- Peak RSS of the benchmark process: {peak:.0f} MB." if peak is not None else
        "- Peak RSS of the benchmark process: not reported on this platform.",
    ])
    write_section(Path(args.doc), "training", body)
    print(body)


if __name__ == "__main__":
    main()
