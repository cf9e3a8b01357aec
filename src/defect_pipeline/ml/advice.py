"""Recipe advice from the data and the machine: backbone, input size, batch size, epochs, class weights.

:func:`dataset_facts` reads the manifest (no image is opened): accepted training samples, class
counts, image sizes, mask coverage. :func:`advise` applies the rules below and returns each
recommendation with its reason; :func:`machine_advice` does both for the device training will use.
Nothing here changes a configuration: ``kedro run --pipeline=advise`` writes the advice. What a
stage applies is :mod:`defect_pipeline.ml.plan`: settings written as ``auto`` (image size, batch,
epochs, sampler, class weights) are resolved there, from these constants and estimates, when the
stage starts.

Rules (the reasons in the output quote them):

* **backbone** by training-set size: under 5,000 samples a small backbone (fewer parameters to
  fit, less overfitting): ``convnext_atto`` on CPU, ``convnext_tiny`` on a GPU; 5,000–30,000 a
  medium one (``convnext_small`` on a GPU); from 30,000 a large one (``vit_base_patch14_dinov2``
  on a GPU with at least 24 GiB, else ``convnext_base``). On a CPU the smallest always: training
  speed, not capacity, is the limit there.
* **input size**: the median image's shorter side, rounded down to a multiple of the stride
  (32; 14 for DINOv2), capped at 512 px on a GPU and 256 px on a CPU; when the median defect covers
  less than 1 % of its image the cap is the image itself (downscaling would erase small defects).
* **batch size**: the largest power of two up to 64 (16 on CPU) whose estimated memory — training
  state 16 bytes per parameter plus activations per sample (about 700 / 1,800 / 4,000 bytes per
  input pixel for small / medium / large backbones in bf16, twice that in fp32; measured 711 for
  convnext_atto on an H200) — stays within 70 % of the device's free memory; with fewer than 16
  per step, gradient accumulation brings the effective batch to 16.
* **epochs**: stage2 aims at about 3,000 optimizer steps (15–100 epochs); stage1 a tenth of that
  (at least 2), stage3 a fifth (at least 2).
* **class weights**: ``balanced`` when the largest image class has more than 3× the samples of the
  smallest in the training split.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from defect_pipeline.ml.distributed import free_memory_bytes

SMALL_DATA, LARGE_DATA = 5_000, 30_000
IMBALANCE_RATIO = 3.0
SMALL_DEFECT_COVERAGE = 0.01
ACTIVATION_BYTES_PER_PIXEL = {"small": 700, "medium": 1_800, "large": 4_000}  # bf16; fp32 is twice that
STEPS_TARGET = 3_000
EFFECTIVE_BATCH = 16
BACKBONES = {("small", "cpu"): "convnext_atto", ("small", "cuda"): "convnext_tiny",
             ("medium", "cpu"): "convnext_atto", ("medium", "cuda"): "convnext_small",
             ("large", "cpu"): "convnext_atto", ("large", "cuda"): "convnext_base"}
PARAMETERS_M = {"convnext_atto": 3.7, "convnext_tiny": 28.6, "convnext_small": 50.2, "convnext_base": 88.6,
                "vit_base_patch14_dinov2": 86.6}


@dataclass(frozen=True)
class DatasetFacts:
    """What the advice looks at, from the manifest's accepted training rows."""

    train_samples: int
    class_counts: dict[str, int]
    median_width: int
    median_height: int
    median_defect_coverage: float | None  # defect pixels / image pixels, over images with a defect mask


def dataset_facts(manifest: pd.DataFrame, *, split: str = "train") -> DatasetFacts:
    rows = manifest[(manifest["status"] == "accepted") & (manifest["split"] == split)]
    if rows.empty:
        raise ValueError(f"the manifest has no accepted '{split}' sample: run the data pipeline first")
    counts = {str(k): int(v) for k, v in rows["label"].value_counts().sort_index().items()}
    coverage = None
    if "mask_area" in rows.columns:
        area = pd.to_numeric(rows["mask_area"], errors="coerce")
        with_defect = area > 0
        if with_defect.any():
            pixels = (rows["width"] * rows["height"]).astype(float)
            coverage = float((area[with_defect] / pixels[with_defect]).median())
    return DatasetFacts(int(len(rows)), counts, int(rows["width"].median()), int(rows["height"].median()), coverage)


def _tier(samples: int) -> str:
    return "small" if samples < SMALL_DATA else "medium" if samples < LARGE_DATA else "large"


def advise(facts: DatasetFacts, *, device: str, free_memory_bytes: float | None,
           precision: str = "bf16") -> dict[str, Any]:
    """Recommendations with their reasons (see the module docstring for the rules)."""
    on_gpu = device.startswith("cuda")
    kind = "cuda" if on_gpu else "cpu"
    reasons: dict[str, str] = {}
    tier = _tier(facts.train_samples)
    backbone = BACKBONES[(tier, kind)]
    gib = (free_memory_bytes or 0) / 2**30
    if tier == "large" and on_gpu and gib >= 24:
        backbone = "vit_base_patch14_dinov2"
    size_rule = (f"{facts.train_samples} training samples: under {SMALL_DATA:,} prefer a small backbone, "
                 f"{SMALL_DATA:,}–{LARGE_DATA:,} a medium one, from {LARGE_DATA:,} a large one")
    reasons["backbone"] = (f"{size_rule} ({tier} here); on a CPU the smallest, since training speed is the limit"
                           if not on_gpu else f"{size_rule} ({tier} here)"
                           + ("; DINOv2-B needs a GPU with at least 24 GiB" if tier == "large" else ""))

    stride = 14 if "dinov2" in backbone else 32
    short_side = min(facts.median_width, facts.median_height)
    cap = 512 if on_gpu else 256
    small_defects = facts.median_defect_coverage is not None and facts.median_defect_coverage < SMALL_DEFECT_COVERAGE
    limit = short_side if small_defects else min(short_side, cap)
    image_size = max(stride * 2, (limit // stride) * stride)
    reasons["image_size"] = (
        f"median image {facts.median_width}×{facts.median_height} px: the shorter side rounded down to a multiple "
        f"of the stride {stride}" + (f", kept at full resolution because the median defect covers "
                                     f"{100 * facts.median_defect_coverage:.2f} % of its image (< 1 %)" if small_defects
                                     else f", at most {cap} px on {'a GPU' if on_gpu else 'a CPU'}"))

    bytes_per_pixel = ACTIVATION_BYTES_PER_PIXEL[tier if backbone != "vit_base_patch14_dinov2" else "large"]
    bytes_per_pixel *= 1 if precision in ("bf16", "fp16") else 2
    state = PARAMETERS_M.get(backbone, 30.0) * 1e6 * 16
    per_sample = bytes_per_pixel * image_size * image_size
    budget = 0.7 * free_memory_bytes if free_memory_bytes else None
    batch = 1
    for candidate in (2, 4, 8, 16, 32, 64):
        if candidate > (64 if on_gpu else 16):
            break
        if budget is not None and state + candidate * per_sample > budget:
            break
        batch = candidate
    accumulate = max(1, math.ceil(EFFECTIVE_BATCH / batch))
    reasons["batch_size"] = (
        f"estimated {state / 2**30:.1f} GiB training state + {per_sample / 2**20:.0f} MiB per sample "
        f"({precision}) against 70 % of {gib:.1f} GiB free; the largest power of two that fits"
        + (f", with {accumulate}× gradient accumulation for an effective batch of {batch * accumulate}"
           if accumulate > 1 else ""))

    steps_per_epoch = max(1, math.ceil(facts.train_samples / (batch * accumulate)))
    stage2 = min(100, max(15, round(STEPS_TARGET / steps_per_epoch)))
    epochs = {"stage1": max(2, stage2 // 10), "stage2": stage2, "stage3": max(2, stage2 // 5)}
    reasons["epochs"] = (f"{steps_per_epoch} optimizer steps per epoch: stage2 aims at about {STEPS_TARGET:,} steps "
                         "(15–100 epochs), stage1 a tenth, stage3 a fifth")

    counts = facts.class_counts
    ratio = max(counts.values()) / max(1, min(counts.values())) if counts else 1.0
    class_weights = "balanced" if ratio > IMBALANCE_RATIO else "none"
    reasons["class_weights"] = (f"largest/smallest image class = {ratio:.1f} "
                                f"({'more' if ratio > IMBALANCE_RATIO else 'not more'} than {IMBALANCE_RATIO:g}×)")
    return {
        "recommendations": {"backbone": backbone, "image_size": image_size, "batch_size": batch,
                            "accumulate_grad_batches": accumulate, "epochs": epochs, "class_weights": class_weights},
        "reasons": reasons,
        "facts": {**asdict(facts), "device": device, "free_memory_gib": round(gib, 1), "precision": precision},
    }


def machine_advice(manifest: pd.DataFrame, *, device: str, precision: str) -> dict[str, Any]:
    """The advice for this manifest on ``device`` (with the memory free on it now) at ``precision``."""
    return advise(dataset_facts(manifest), device=device, free_memory_bytes=free_memory_bytes(device),
                  precision=precision)


def render_advice_markdown(advice: dict[str, Any], current: dict[str, Any] | None = None) -> str:
    """The advice as a table: recommendation, the current configuration, the reason."""
    rec, reasons, facts = advice["recommendations"], advice["reasons"], advice["facts"]
    current = current or {}
    rows = [("backbone", rec["backbone"], current.get("backbone"), reasons["backbone"]),
            ("image_size", rec["image_size"], current.get("image_size"), reasons["image_size"]),
            ("batch_size × accumulation", f"{rec['batch_size']} × {rec['accumulate_grad_batches']}",
             current.get("batch"), reasons["batch_size"]),
            ("epochs (stage1/2/3)", "/".join(str(epochs) for epochs in rec["epochs"].values()),
             current.get("epochs"), reasons["epochs"]),
            ("loss.class_weights", rec["class_weights"], current.get("class_weights"), reasons["class_weights"])]
    lines = [f"# Recipe advice ({facts['train_samples']} training samples, {facts['device']}, "
             f"{facts['free_memory_gib']} GiB free)", "",
             "Advice only: the configuration is never changed by it. Settings written as `auto` (image size, "
             "batch, epochs, sampler, class weights) are chosen when each stage starts, by the rules of "
             "docs/training.md; the stage logs them and tags its MLflow run with them.", "",
             "| setting | advice | current | why |", "|---|---|---|---|"]
    lines += [f"| {name} | {value} | {'–' if now is None else now} | {why} |" for name, value, now, why in rows]
    return "\n".join(lines) + "\n"
