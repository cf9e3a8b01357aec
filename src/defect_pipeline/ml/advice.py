"""Recipe advice from the data and the machine: backbone, input size, batch size, epochs, class weights.

:func:`dataset_facts` reads the manifest (no image is opened): accepted training samples, class
counts, image sizes, mask coverage. :func:`advise` applies the rules below and returns each
recommendation with its reason; :func:`machine_advice` does both for the device training will use.
Nothing here changes a configuration: ``kedro run --pipeline=advise`` writes the advice. What a
stage applies is :mod:`defect_pipeline.ml.plan`: settings written as ``auto`` (image size, batch,
epochs, sampler, class weights) are resolved there, from these constants and estimates, when the
stage starts.

Rules (the reasons in the output quote them):

* **backbone** by training-set size, the DINOv3 guides' rule on a GPU: under 5,000 samples
  DINOv3-S (``vit_small_patch16_dinov3``: fewer parameters to fit, less overfitting), 5,000–50,000
  DINOv3-B, from 50,000 DINOv3-L (the guides move to a g-class model from 100,000; S/B/L are the
  sizes this package tests, so L stays the advice there). A size needs free GPU memory (B 16 GiB,
  L 24 GiB); with less the next smaller one is advised. On a CPU always ``convnext_atto``:
  training speed, not capacity, is the limit there.
* **input size**: the median image's shorter side, rounded down to a multiple of the stride
  (32; 16 for DINOv3), capped at 512 px on a GPU and 256 px on a CPU; when the median defect covers
  less than 1 % of its image the cap is the image itself (downscaling would erase small defects).
* **batch size**: the largest power of two up to 64 (16 on CPU) whose estimated memory — training
  state 16 bytes per parameter plus activations per sample (about 700 / 1,800 / 4,000 bytes per
  input pixel for small / medium / large backbones in bf16, twice that in fp32; measured 711 for
  convnext_atto on an H200; DINOv3-S counted medium, B and L large, not yet measured) — stays within 70 % of the device's free memory; with fewer than 16
  per step, gradient accumulation brings the effective batch to 16.
* **epochs**: stage2 aims at about 3,000 optimizer steps (15–100 epochs); stage1 a tenth of that
  (at least 2), stage3 a fifth (at least 2).
* **class weights**: ``sqrt`` (1/sqrt(class count), the rule ``auto`` applies, see ``ml/plan.py``) when the
  largest image class has more than 3× the samples of the smallest in the training split.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from defect_pipeline.ml.distributed import free_memory_bytes

SMALL_DATA, LARGE_DATA, GIANT_DATA = 5_000, 50_000, 100_000
IMBALANCE_RATIO = 3.0
SMALL_DEFECT_COVERAGE = 0.01
ACTIVATION_BYTES_PER_PIXEL = {"small": 700, "medium": 1_800, "large": 4_000}  # bf16; fp32 is twice that
STEPS_TARGET = 3_000
EFFECTIVE_BATCH = 16
CPU_BACKBONE = "convnext_atto"
GPU_BACKBONES = {"small": "vit_small_patch16_dinov3", "medium": "vit_base_patch16_dinov3",
                 "large": "vit_large_patch16_dinov3"}
MIN_GPU_GIB = {"small": 0.0, "medium": 16.0, "large": 24.0}  # free memory a DINOv3 size is advised from
PARAMETERS_M = {"convnext_atto": 3.7, "vit_small_patch16_dinov3": 21.6, "vit_base_patch16_dinov3": 85.6,
                "vit_large_patch16_dinov3": 303.1}
ACTIVATION_TIER = {"convnext_atto": "small", "vit_small_patch16_dinov3": "medium",
                   "vit_base_patch16_dinov3": "large", "vit_large_patch16_dinov3": "large"}
TIERS = ("small", "medium", "large")


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


def _gpu_backbone(tier: str, gib: float, size_rule: str, samples: int) -> tuple[str, str]:
    """The DINOv3 size of ``tier``, or the largest smaller one that the free memory allows, and why."""
    chosen = next(t for t in reversed(TIERS[:TIERS.index(tier) + 1]) if gib >= MIN_GPU_GIB[t])
    reason = f"{size_rule} ({tier} here)"
    if chosen != tier:
        reason += (f"; {GPU_BACKBONES[tier]} is advised from {MIN_GPU_GIB[tier]:g} GiB free and {gib:.1f} GiB "
                   f"are, so the next smaller size")
    if samples >= GIANT_DATA:
        reason += (f"; from {GIANT_DATA:,} the guides use a g-class DINOv3, which this package does not test "
                   "(vit_huge_plus_patch16_dinov3 builds, unadvised)")
    return GPU_BACKBONES[chosen], reason


def advise(facts: DatasetFacts, *, device: str, free_memory_bytes: float | None,
           precision: str = "bf16") -> dict[str, Any]:
    """Recommendations with their reasons (see the module docstring for the rules)."""
    on_gpu = device.startswith("cuda")
    kind = "cuda" if on_gpu else "cpu"
    reasons: dict[str, str] = {}
    tier = _tier(facts.train_samples)
    gib = (free_memory_bytes or 0) / 2**30
    size_rule = (f"{facts.train_samples} training samples: under {SMALL_DATA:,} prefer a small backbone "
                 f"(DINOv3-S), {SMALL_DATA:,}–{LARGE_DATA:,} a medium one (DINOv3-B), from {LARGE_DATA:,} a large "
                 f"one (DINOv3-L)")
    if on_gpu:
        backbone, reasons["backbone"] = _gpu_backbone(tier, gib, size_rule, facts.train_samples)
    else:
        backbone = CPU_BACKBONE
        reasons["backbone"] = f"{size_rule} ({tier} here); on a CPU the smallest, since training speed is the limit"

    stride = 16 if "dinov3" in backbone else 32
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

    bytes_per_pixel = ACTIVATION_BYTES_PER_PIXEL[ACTIVATION_TIER[backbone]]
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
    class_weights = "sqrt" if ratio > IMBALANCE_RATIO else "none"  # as stageN.loss.class_weights: auto resolves
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
