"""Training throughput on 1 vs N processes (GPUs, or CPU processes) through the distributed launcher.

The same model, per-process batch and synthetic data are trained for two epochs of ``--batches``
batches per process with :func:`defect_pipeline.ml.distributed.launch` +
:func:`defect_pipeline.ml.engine.run_training_job` — the code path of a stage with
``trainer.devices: N`` — once per process count, all in one run. The figure is the second epoch's
``train_samples_per_s`` (all ranks' samples over rank 0's training time; the first epoch warms
up allocators and kernels). Data: a pool of random images and masks held in memory, so the
figure is the model step's, not the image decoding's.

``python -m defect_pipeline.benchmarks distributed --processes 1 2`` writes the section
``distributed_<accelerator>`` of docs/benchmarks.md. Process counts above the visible GPUs are
reported as not measured. On CPU the section states the torch threads each process trained with,
as the history recorded them.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from defect_pipeline.benchmarks import describe_machine, write_section
from defect_pipeline.benchmarks.recorded import threads_used


class SyntheticDefects(Dataset):
    """``length`` samples cycling through ``pool`` random images with random rectangular defects."""

    def __init__(self, length: int, *, image_size: int, classes: int, pool: int = 32, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.length = length
        self.images = torch.randn(pool, 3, image_size, image_size, generator=generator)
        self.labels = torch.randint(0, classes, (pool,), generator=generator)
        self.masks = torch.zeros(pool, image_size, image_size, dtype=torch.long)
        for i, label in enumerate(self.labels.tolist()):
            if label > 0:
                y, x = torch.randint(0, image_size // 2, (2,), generator=generator).tolist()
                self.masks[i, y:y + image_size // 4, x:x + image_size // 4] = label

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        i = index % len(self.images)
        return {"image": self.images[i], "mask": self.masks[i], "label": self.labels[i]}


def _measure(processes: int, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    from defect_pipeline.ml.checkpoint import CheckpointStore
    from defect_pipeline.ml.distributed import launch, resolve_trainer
    from defect_pipeline.ml.engine import EngineConfig, TrainingJob, run_training_job
    from defect_pipeline.ml.labels import LabelSpace
    from defect_pipeline.ml.losses import ClassificationLoss, MultitaskLoss, SegmentationLoss
    from defect_pipeline.ml.metrics import MultitaskMetrics
    from defect_pipeline.ml.models import create_model

    settings = resolve_trainer(accelerator=args.accelerator, devices=processes, strategy="auto", num_nodes=1,
                               precision=args.precision)
    labels = LabelSpace(defect_classes=("a", "b", "c"), good_label="good")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = create_model(args.backbone, num_image_classes=labels.num_image_classes,
                             num_seg_classes=labels.num_seg_classes, seg_mode="multiclass",
                             decoder_channels=args.decoder_channels, image_size=args.image_size)
    loss = MultitaskLoss(ClassificationLoss(labels.num_image_classes), SegmentationLoss("multiclass"))
    per_epoch = processes * args.batches * args.batch_size
    train_set = SyntheticDefects(per_epoch, image_size=args.image_size, classes=labels.num_image_classes)
    val_set = SyntheticDefects(args.batch_size * processes, image_size=args.image_size,
                               classes=labels.num_image_classes, seed=1)
    config = EngineConfig(epochs=2, lr=1e-3, backbone_lr=1e-4, weight_decay=0.01, precision=settings.precision,
                          device=settings.accelerator, progress=False, resume=False, patience=10)
    meta = {"stage": f"bench{processes}", "labels": labels.to_dict(),
            "model_meta": {"backbone": args.backbone, "decoder": model.decoder_name, "seg_mode": "multiclass",
                           "image_size": args.image_size}}
    job = TrainingJob(model, loss, train_set, val_set, MultitaskMetrics(labels), config,
                      CheckpointStore(folder / f"p{processes}"), meta, batch_size=args.batch_size,
                      num_workers=args.num_workers, cpu_threads=args.threads)
    result = launch(settings, run_training_job, job)
    last = result.history[-1]
    return {"processes": processes, "accelerator": settings.accelerator, "precision": settings.precision,
            "batch": args.batch_size, "global_batch": args.batch_size * processes,
            "samples_per_s": float(last["train_samples_per_s"]), "cpu_threads": last.get("cpu_threads"),
            "peak_gpu_mem_mb": last.get("peak_gpu_mem_mb")}


def cpu_threads_sentence(rows: list[dict[str, Any]], requested: int | None, cores: int | None = None) -> str:
    """The torch threads each process trained with, as rank 0's history recorded them, and what that
    means for the speed-up on this machine's cores."""
    asked = f"`--threads {requested}`" if requested else "`--threads` not given: torch's default"
    return (f"Each process trained with {threads_used(row.get('cpu_threads') for row in rows)} (recorded by rank 0; "
            f"{asked}) and the processes share this machine's {cores or os.cpu_count()} cores: the speed-up cannot "
            "exceed cores / threads per process.")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m defect_pipeline.benchmarks distributed")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--backbone", default="convnext_atto")
    parser.add_argument("--decoder-channels", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=20, help="batches per process per epoch")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    parser.add_argument("--doc", default="docs/benchmarks.md")
    args = parser.parse_args(argv)

    accelerator = "cuda" if args.accelerator == "auto" and torch.cuda.is_available() else args.accelerator
    accelerator = "cpu" if accelerator == "auto" else accelerator
    visible = torch.cuda.device_count() if accelerator == "cuda" else None
    runnable = [n for n in args.processes if visible is None or n <= visible]
    skipped = [n for n in args.processes if n not in runnable]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in runnable:
            rows.append(_measure(n, argparse.Namespace(**{**vars(args), "accelerator": accelerator}), Path(tmp)))
            print(rows[-1], file=sys.stderr)

    base = rows[0]["samples_per_s"] if rows else None
    device = torch.cuda.get_device_name(0) if accelerator == "cuda" else "CPU processes (gloo)"
    unit, plural = ("GPU", "GPUs") if accelerator == "cuda" else ("process", "processes")
    lines = [
        f"## Distributed training throughput: {device}",
        "",
        f"Measured by `python -m defect_pipeline.benchmarks distributed {' '.join(argv)}` on {describe_machine()}"
        f"; torch {torch.__version__}. Model: {args.backbone} + FPN ({args.decoder_channels} channels) at "
        f"{args.image_size} px, synthetic in-memory data, {args.batches} batches of {args.batch_size} per {unit} "
        "per epoch; second epoch's training throughput (all ranks' samples / rank 0's training time).",
        "",
        f"| {plural} | per-{unit} batch | global batch | precision | samples/s | vs 1 {unit} | peak GPU MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        memory = f"{row['peak_gpu_mem_mb']:.0f}" if row.get("peak_gpu_mem_mb") else "–"
        lines.append(f"| {row['processes']} | {row['batch']} | {row['global_batch']} | {row['precision']} | "
                     f"{row['samples_per_s']:.1f} | {row['samples_per_s'] / base:.2f}× | {memory} |")
    if skipped:
        lines += ["", f"Not measured: {', '.join(map(str, skipped))} {plural} — this machine has {visible} visible "
                      f"{unit}(s)."]
    if accelerator == "cpu":
        lines += ["", cpu_threads_sentence(rows, args.threads)]
    write_section(Path(args.doc), f"distributed_{accelerator}", "\n".join(lines))
    print("\n".join(lines))
