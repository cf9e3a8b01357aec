"""GPU benchmark: our training engine vs a bare loop, samples/s and MFU per backbone, inference, loader ceiling.

``python -m defect_pipeline.benchmarks gpu [--doc docs/benchmarks.md]`` measures in one run, for each
backbone (default: convnext_atto, convnext_tiny and a ViT-B, each with its default decoder):

* **training**: the engine (:func:`defect_pipeline.ml.engine.train`, one epoch of ``--steps`` batches
  after a warm-up epoch) and a bare ``forward → loss → backward → step`` loop at the same settings
  (precision, channels_last by family, fused AdamW on CUDA, ``--compile``), on synthetic in-memory
  batches; their ratio (goal ≥ 0.9), samples/s, and the MFU estimate: samples/s x FLOPs per training
  sample (3 x the forward's, counted by ``torch.utils.flop_counter``) / the GPU's dense bf16 peak
  (:data:`PEAK_BF16_FLOPS`, by device name; unknown GPU or CPU: no MFU);
* **inference**: images/s of the network alone (eval, inference mode, autocast);
* **loader ceiling**: images/s of the data loader alone (JPEG decode + the training transform in
  ``--workers`` processes), the rate above which the data, not the model, limits training.

The command imports only the library (no Kedro, no MLflow) and installs nothing, so it runs on a GPU
machine that has the library's own requirements without Kedro and MLflow (:data:`REQUIREMENTS`).
Without CUDA (and without ``--device cpu``, which measures on the CPU as a smoke test) it writes the
section saying "not measured", with the command to run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from defect_pipeline.benchmarks import describe_machine, write_section

SECTION = "gpu"
DEFAULT_BACKBONES = ("convnext_atto", "convnext_tiny", "vit_base_patch16_224")
COMMAND = "python -m defect_pipeline.benchmarks gpu --doc docs/benchmarks.md"
REQUIREMENTS = ("torch, timm, segmentation-models-pytorch, albumentations, imagehash, pandas, torchmetrics, "
                "opencv")  # what the library imports on this command's path (no Kedro, no MLflow)
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12,
                   "V100": 125e12, "RTX 4090": 165e12}  # dense bf16 (V100: fp16) tensor-core peaks, datasheets


@dataclass
class Row:
    """One backbone's figures."""

    backbone: str
    engine: float  # training samples/s
    bare: float
    inference: float  # images/s
    flops_per_sample: float  # training: 3 x forward
    mfu: float | None


def peak_flops(device: str) -> tuple[float | None, str]:
    """The dense bf16 peak of ``device`` and its name (None where unknown)."""
    if not device.startswith("cuda"):
        return None, "CPU"
    name = torch.cuda.get_device_name(0)
    peak = next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)
    return peak, name


def _model(backbone: str, image_size: int, device: str, channels_last: bool) -> Any:
    from defect_pipeline.ml.models import create_model

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = create_model(backbone, num_image_classes=4, num_seg_classes=4, decoder_channels=64,
                             image_size=image_size)
    return model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)


def _loss(device: str) -> Any:
    from defect_pipeline.ml.losses import ClassificationLoss, MultitaskLoss, SegmentationLoss

    return MultitaskLoss(ClassificationLoss(4), SegmentationLoss("multiclass")).to(device)


class _Synthetic(torch.utils.data.Dataset):
    """``steps x batch`` random samples held in memory (what the engine's loader yields)."""

    def __init__(self, count: int, image_size: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randn(count, 3, image_size, image_size, generator=generator)
        self.masks = torch.randint(0, 4, (count, image_size, image_size), generator=generator)
        self.labels = torch.randint(0, 4, (count,), generator=generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[index], "mask": self.masks[index], "label": self.labels[index]}


def forward_flops(model: Any, image_size: int, device: str) -> float:
    """FLOPs of one sample's forward pass (matmuls and convolutions, 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, image_size, image_size, device=device))
    return float(counter.get_total_flops())


def bare_loop(model: Any, loss_fn: Any, loader: Any, *, device: str, precision: str, channels_last: bool,
              epochs: int = 2) -> float:
    """Training samples/s of the textbook loop (the last of ``epochs`` passes; the first warms up)."""
    from defect_pipeline.ml.device import autocast
    from defect_pipeline.ml.speed import adamw_options

    optimizer = torch.optim.AdamW(list(model.parameters()) + list(loss_fn.parameters()), lr=1e-4,
                                  **adamw_options(device))
    model.train()
    rate = 0.0
    for _ in range(epochs):
        seen, started = 0, time.perf_counter()
        for batch in loader:
            image = batch["image"].to(device, non_blocking=True,
                                      memory_format=torch.channels_last if channels_last else torch.preserve_format)
            mask, label = batch["mask"].to(device, non_blocking=True), batch["label"].to(device, non_blocking=True)
            with autocast(device, precision):
                out = model(image)
            loss = loss_fn(out.seg_logits.float(), out.cls_logits.float(), mask, label, step=0, total_steps=1)
            optimizer.zero_grad(set_to_none=True)
            loss.total.backward()
            optimizer.step()
            seen += len(label)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        rate = seen / (time.perf_counter() - started)
    return rate


def engine_rate(model: Any, loss_fn: Any, loader: Any, *, device: str, precision: str, channels_last: bool,
                compile: bool) -> float:
    """Training samples/s of :func:`~defect_pipeline.ml.engine.train` (second epoch; no validation)."""
    from defect_pipeline.ml.checkpoint import CheckpointStore
    from defect_pipeline.ml.engine import EngineConfig, train
    from defect_pipeline.ml.labels import LabelSpace
    from defect_pipeline.ml.metrics import MultitaskMetrics

    labels = LabelSpace(("a", "b", "c"), has_good=True)
    config = EngineConfig(epochs=2, lr=1e-4, backbone_lr=1e-4, weight_decay=0.01, progress=False, seed=0,
                          device=device, precision=precision, channels_last=channels_last, compile=compile)
    meta = {"stage": "bench", "model_meta": {"backbone": "x", "decoder": "x", "seg_mode": "multiclass"},
            "labels": labels.to_dict(), "config": {}, "manifest_hash": ""}
    with tempfile.TemporaryDirectory() as folder:
        # an empty validation loader: the comparison is about the training step only
        empty = torch.utils.data.DataLoader(_Synthetic(0, 8), batch_size=1)
        result = train(model, loss_fn, loader, empty, metrics=MultitaskMetrics(labels, "multiclass"), config=config,
                       store=CheckpointStore(folder), meta=meta)
    return float(result.history[-1]["train_samples_per_s"])


@torch.inference_mode()
def inference_rate(model: Any, *, batch_size: int, image_size: int, steps: int, device: str, precision: str,
                   channels_last: bool) -> float:
    """Images/s of the network's forward pass on one resident batch (after a warm-up pass)."""
    from defect_pipeline.ml.device import autocast

    model.eval()
    batch = torch.randn(batch_size, 3, image_size, image_size, device=device)
    if channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)
    for step in range(steps + 1):
        if step == 1:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            started = time.perf_counter()
        with autocast(device, precision):
            model(batch)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - started)


def loader_ceiling(*, image_size: int, batch_size: int, workers: int, images: int = 2048) -> float:
    """Images/s of a loader that decodes JPEGs and applies the training transform, nothing else: the second
    pass of persistent workers (the first starts them; timed, it measured the workers' start-up)."""
    import cv2

    from defect_pipeline.ml.augment import build_transform

    with tempfile.TemporaryDirectory() as folder:
        rng = np.random.default_rng(0)
        side = int(image_size * 1.5)
        paths = []
        for index in range(min(images, 64)):  # 64 distinct files, read over and over
            path = Path(folder) / f"{index}.jpg"
            cv2.imwrite(str(path), rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
            paths.append(str(path))
        dataset = _Decoding([paths[i % len(paths)] for i in range(images)],
                            build_transform([{"name": "HorizontalFlip", "p": 0.5}], image_size=image_size, train=True))
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                                             pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0)
        for _ in loader:  # the workers start (imports, forks) during this pass
            pass
        started = time.perf_counter()
        seen = sum(len(batch) for batch in loader)
        return seen / (time.perf_counter() - started)


class _Decoding(torch.utils.data.Dataset):
    def __init__(self, paths: list[str], transform: Any) -> None:
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        import cv2

        image = cv2.cvtColor(cv2.imread(self.paths[index]), cv2.COLOR_BGR2RGB)
        return self.transform(image=image, mask=np.zeros(image.shape[:2], np.uint8))["image"]


def measure(backbone: str, args: argparse.Namespace, device: str, precision: str, peak: float | None) -> Row:
    """One backbone's training (engine and bare loop), inference and MFU."""
    from defect_pipeline.ml.speed import compile_with_fallback, resolve_channels_last

    channels_last = resolve_channels_last(args.channels_last, backbone)[0]
    loader = torch.utils.data.DataLoader(_Synthetic(args.steps * args.batch_size, args.image_size),
                                         batch_size=args.batch_size, pin_memory=device.startswith("cuda"),
                                         drop_last=True)
    common = {"device": device, "precision": precision, "channels_last": channels_last}
    flops = 3 * forward_flops(_model(backbone, args.image_size, device, False), args.image_size, device)
    bare_model = _model(backbone, args.image_size, device, channels_last)
    compile_with_fallback(bare_model, enabled=args.compile)
    bare = bare_loop(bare_model, _loss(device), loader, **common)
    engine = engine_rate(_model(backbone, args.image_size, device, channels_last), _loss(device), loader,
                         compile=args.compile, **common)
    inference = inference_rate(_model(backbone, args.image_size, device, channels_last), batch_size=args.batch_size,
                               image_size=args.image_size, steps=args.steps, **common)
    return Row(backbone, engine, bare, inference, flops, engine * flops / peak if peak else None)


def render(rows: list[Row], args: argparse.Namespace, device_name: str, precision: str, loader: float) -> str:
    """The section's Markdown."""
    lines = [f"## GPU: engine vs bare loop, MFU, inference and the loader ceiling ({device_name})", "",
             f"Measured by `{_command(args)}` on {device_name}; host {describe_machine()}; torch {torch.__version__}. "
             f"{args.image_size} px, batch {args.batch_size}, {args.steps} timed steps after a warm-up, {precision}, "
             f"channels_last {args.channels_last}, compile {str(args.compile).lower()}, synthetic in-memory batches.",
             "", "| backbone | engine samples/s | bare loop samples/s | engine / bare | training GFLOP/sample | MFU "
             "| inference images/s |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        mfu = f"{row.mfu:.1%}" if row.mfu is not None else "n/a (peak unknown)"
        lines.append(f"| {row.backbone} | {row.engine:.1f} | {row.bare:.1f} | {row.engine / row.bare:.2f} | "
                     f"{row.flops_per_sample / 1e9:.2f} | {mfu} | {row.inference:.1f} |")
    lines += ["", f"Loader ceiling (JPEG decode + training transform, {args.workers} workers): **{loader:.0f} "
                  "images/s**; training above this rate is limited by the data, not the GPU."]
    return "\n".join(lines)


def not_measured(args: argparse.Namespace) -> str:
    """The section on a machine without CUDA: nothing measured, the command ready."""
    return "\n".join([
        "## GPU: engine vs bare loop, MFU, inference and the loader ceiling", "",
        f"**Not measured**: no CUDA device on the machine this section was written on ({describe_machine()}). "
        f"On a GPU machine (the library's requirements without Kedro and MLflow: {REQUIREMENTS}), from the "
        "repository root:", "", "```bash", f"PYTHONPATH=src {COMMAND}", "```", "",
        "It measures, in one run, for convnext_atto, convnext_tiny and a ViT-B (224 px, bf16): our engine vs a "
        "bare PyTorch loop at the same settings (goal ≥ 0.9), training samples/s and an MFU estimate, inference "
        "images/s, and the data loader's ceiling. Goals on an H200-class GPU (issue 16): ≥ 5,000 training samples/s "
        "for convnext_atto + FPN, ≥ 30 % MFU for the ViT-B, ≥ 15,000 inference images/s for convnext_atto."])


def _command(args: argparse.Namespace) -> str:
    return (f"python -m defect_pipeline.benchmarks gpu --backbones {' '.join(args.backbones)} --image-size "
            f"{args.image_size} --batch-size {args.batch_size} --steps {args.steps} --workers {args.workers}"
            f"{' --compile' if args.compile else ''} --doc {args.doc}")


def main(argv: list[str] | None = None) -> None:
    """Measure (or say why not) and write the ``gpu`` section of ``--doc``."""
    parser = argparse.ArgumentParser(prog="python -m defect_pipeline.benchmarks gpu")
    parser.add_argument("--backbones", nargs="+", default=list(DEFAULT_BACKBONES))
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--workers", type=int, default=8, help="loader processes for the loader ceiling")
    parser.add_argument("--channels-last", default="auto", choices=["auto", "true", "false"])
    parser.add_argument("--compile", action="store_true", help="torch.compile in both the engine and the bare loop")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"],
                        help="cpu: measure on the CPU anyway (a smoke test; no MFU)")
    parser.add_argument("--doc", default="docs/benchmarks.md")
    args = parser.parse_args(argv)
    args.channels_last = {"true": True, "false": False}.get(args.channels_last, args.channels_last)
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    if device == "auto":
        body = not_measured(args)
    else:
        from defect_pipeline.ml.device import resolve_prediction_device

        precision = resolve_prediction_device(device, "auto").precision
        peak, name = peak_flops(device)
        rows = [measure(backbone, args, device, precision, peak) for backbone in args.backbones]
        loader = loader_ceiling(image_size=args.image_size, batch_size=args.batch_size, workers=args.workers)
        body = render(rows, args, name, precision, loader)
    write_section(Path(args.doc), SECTION, body)
    print(body)


if __name__ == "__main__":
    main()
