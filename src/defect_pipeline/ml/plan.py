"""``auto`` training settings: a dataset fingerprint and the machine, turned into a plan by explicit rules.

The idea is nnU-Net's experiment planner: measure the data once (image sizes, class
frequencies, defect sizes), then derive the recipe from those numbers by rules that can be read
and tested, instead of copying constants that fitted another dataset. Every setting below may
be written as ``auto`` in the parameters; an explicit value always wins and is reported as such.

:func:`fingerprint` reads the manifest's accepted training rows (no image is opened);
:class:`Machine` is the device the stage trains on. :func:`plan_stage` applies the rules and
returns a :class:`StagePlanAuto`: one :class:`Resolved` per setting (value, what was asked for,
the rule's reason), which the stage logs, records in ``training_summary.json`` (``auto``) and
tags on its MLflow run (``auto.model.image_size``, ``auto.stage.batch_size`` ... with ``.reason``).

Rules (docs/training.md, "Settings chosen from the data"):

* ``model.image_size``: the median image's shorter side rounded down to a multiple of the
  network stride, at least two strides, at most :data:`IMAGE_SIZE_CAP` (256 px on a CPU, 512 on
  a GPU). Larger images are not squashed: ``model.input_mode: auto`` then trains on crops at
  native scale (:mod:`defect_pipeline.ml.input_mode`), so small defects keep their pixels.
* ``stageN.batch_size``: the largest power of two up to :data:`BATCH_CAP` (16 on a CPU, 64 on a
  GPU) that leaves at least :data:`MIN_STEPS_PER_EPOCH` optimizer steps per epoch and whose
  estimated memory (the advice's estimate, :mod:`defect_pipeline.ml.advice`) fits 70 % of the
  free memory; at least 2.
* ``stageN.epochs``: stage2 aims at about :data:`~defect_pipeline.ml.advice.STEPS_TARGET`
  optimizer steps (15–100 epochs), stage1 a tenth (at least 2), stage3 a fifth (at least 2). With a
  ``time_budget_s`` the value stays ``auto``: the engine measures its step time and makes the stage
  (and its LR and loss-weight schedules) as long as the budget; ``max_steps``, when set, replaces
  the epoch count.
* ``stageN.sampler``: ``uniform`` (a shuffle: every training image once per epoch). The imbalance
  is handled in the loss instead: drawing the few images of a rare class several times per epoch
  let the network memorise them (measured on a generated dataset of 168 defect-free and 5 x 16
  rare training images: the balanced sampler stayed at the always-defect-free macro F1, see
  docs/training.md). ``balanced`` stays available explicitly: each image drawn with probability
  proportional to ``1 / sqrt(n_class)`` (:func:`sampling_weights`).
* ``stageN.loss.class_weights``: ``sqrt`` when the largest image class of the training split has
  more than :data:`~defect_pipeline.ml.advice.IMBALANCE_RATIO` times the images of the smallest
  and the sampler is ``uniform``: class ``c`` of ``n_c`` images weighs ``1 / sqrt(n_c)``, scaled
  so that the weights average 1 over the training images (:func:`loss_class_weights`) — the
  rare classes count more without the full ``1 / n_c`` (``balanced``), whose few, heavily
  weighted images made the predictions swing between all-defect-free and all-defect from epoch
  to epoch. ``none`` when the classes are balanced or the sampler is ``balanced`` (both
  together would over-correct).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from defect_pipeline.ml.advice import ACTIVATION_BYTES_PER_PIXEL, IMBALANCE_RATIO, PARAMETERS_M, STEPS_TARGET
from defect_pipeline.ml.distributed import TrainerSettings, free_memory_bytes
from defect_pipeline.ml.input_mode import input_facts

AUTO = "auto"
IMAGE_SIZE_CAP = {"cpu": 256, "cuda": 512}
BATCH_CAP = {"cpu": 16, "cuda": 64}
MIN_BATCH = 2
MIN_STEPS_PER_EPOCH = 8
MEMORY_FRACTION = 0.7
STAGE_EPOCHS = {"stage1": (10, 2), "stage3": (5, 2)}  # stage → (fraction of stage2's epochs as 1/N, minimum)
STAGE2_EPOCHS = (15, 100)
SAMPLERS = ("auto", "uniform", "balanced")
CLASS_WEIGHTS = ("balanced", "sqrt")  # named rules of loss_class_weights


@dataclass(frozen=True)
class Fingerprint:
    """What the rules look at, from the manifest's accepted training rows."""

    train_samples: int
    median_width: float
    median_height: float
    min_side: float
    max_side: float
    class_counts: dict[str, int]  # image label → training images
    defect_free_share: float | None  # share of training images with the good label (None: no good label given)
    median_defect_px: float | None  # median sqrt(mask_area / mask_components) over images with a measured defect

    @property
    def median_short_side(self) -> float:
        return min(self.median_width, self.median_height)

    @property
    def class_frequencies(self) -> dict[str, float]:
        return {label: count / self.train_samples for label, count in self.class_counts.items()}

    @property
    def imbalance_ratio(self) -> float:
        """Images of the largest image class / images of the smallest (classes with at least one image)."""
        counts = [c for c in self.class_counts.values() if c > 0]
        return max(counts) / min(counts) if counts else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "median_short_side": self.median_short_side,
                "class_frequencies": {k: round(v, 4) for k, v in self.class_frequencies.items()},
                "imbalance_ratio": round(self.imbalance_ratio, 2)}


@dataclass(frozen=True)
class Machine:
    """The device a stage trains on."""

    device: str  # "cpu" | "cuda"
    cpu_cores: int
    free_memory_bytes: float | None = None
    precision: str = "fp32"
    world_size: int = 1

    @property
    def kind(self) -> str:
        return "cuda" if self.device.startswith("cuda") else "cpu"


def machine_from(settings: TrainerSettings) -> Machine:
    """The :class:`Machine` of resolved trainer settings: usable cores and the memory free now."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return Machine(settings.accelerator, cpu_cores=cores, free_memory_bytes=free_memory_bytes(settings.accelerator),
                   precision=settings.precision, world_size=settings.world_size)


@dataclass(frozen=True)
class Resolved:
    """One setting: the value used, what the parameters asked for, and why."""

    key: str
    value: Any
    requested: Any
    reason: str

    @property
    def auto(self) -> bool:
        return self.requested == AUTO

    @property
    def tag(self) -> str:
        """The MLflow tag of the stage run that records it: ``auto.model.image_size``, ``auto.stage.batch_size``."""
        scope, _, name = self.key.partition(".")
        return f"auto.{self.key}" if scope == "model" else f"auto.stage.{name}"


@dataclass
class StagePlanAuto:
    """What a stage's ``auto`` settings resolved to, and the facts behind them."""

    fingerprint: Fingerprint
    machine: Machine
    settings: dict[str, Resolved] = field(default_factory=dict)  # image_size, batch_size, epochs, sampler, ...

    def to_dict(self) -> dict[str, Any]:
        """The ``auto`` section of ``training_summary.json``."""
        return {"resolved": {item.key: {"value": item.value, "requested": item.requested, "auto": item.auto,
                                        "reason": item.reason, "tag": item.tag} for item in self.settings.values()},
                "fingerprint": self.fingerprint.to_dict(), "machine": asdict(self.machine)}


def fingerprint(manifest: pd.DataFrame, *, good_label: str | None = None, split: str = "train") -> Fingerprint:
    """The :class:`Fingerprint` of the accepted ``split`` rows of ``manifest``."""
    needed = {"status", "split", "label", "width", "height"}
    if not needed <= set(manifest.columns):
        raise ValueError(f"the manifest lacks columns {sorted(needed - set(manifest.columns))}: run the data "
                         "pipeline again (kedro run --pipeline=data) before settings can be chosen from it")
    rows = manifest[manifest["status"].astype("object").eq("accepted") & manifest["split"].astype("object").eq(split)]
    width = pd.to_numeric(rows["width"], errors="coerce")
    height = pd.to_numeric(rows["height"], errors="coerce")
    sized = width.notna() & height.notna()
    if rows.empty or not sized.any():
        raise ValueError(f"the manifest has no accepted '{split}' image with a size: run the data pipeline first "
                         "(kedro run --pipeline=data), or set the auto settings explicitly")
    counts = {str(k): int(v) for k, v in rows["label"].astype("object").value_counts().sort_index().items()}
    short, long = pd.concat([width[sized], height[sized]], axis=1).min(axis=1), \
        pd.concat([width[sized], height[sized]], axis=1).max(axis=1)
    good = None if good_label is None else counts.get(good_label, 0) / len(rows)
    return Fingerprint(int(len(rows)), float(width[sized].median()), float(height[sized].median()),
                       float(short.min()), float(long.max()), counts, good,
                       input_facts(manifest, split=split).median_defect_px)


def _requested(value: Any) -> bool:
    return value == AUTO


def resolve_image_size(requested: int | str, fp: Fingerprint, machine: Machine, *, stride: int) -> Resolved:
    """``model.image_size`` (see the module docstring for the rule)."""
    key = "model.image_size"
    if not _requested(requested):
        return Resolved(key, int(requested), requested, f"{key}: {requested} (set explicitly)")
    cap = IMAGE_SIZE_CAP[machine.kind]
    side = fp.median_short_side
    size = max(2 * stride, int(min(side, cap) // stride) * stride)
    reason = (f"the median image is {fp.median_width:g} x {fp.median_height:g} px: its shorter side "
              f"{side:g} px{f', capped at {cap} px on a {machine.kind.upper()},' if side > cap else ''} rounded "
              f"down to a multiple of the stride {stride} (at least {2 * stride})")
    if side > cap:
        reason += "; model.input_mode auto decides whether larger images are cropped at native scale"
    return Resolved(key, size, requested, reason)


def estimated_memory(backbone: str, image_size: int, batch: int, precision: str) -> float:
    """Bytes one training process needs: 16 bytes per parameter (weights, gradients, AdamW) plus activations
    (the advice's bytes per input pixel for a small backbone, twice that in fp32)."""
    bytes_per_pixel = ACTIVATION_BYTES_PER_PIXEL["small"] * (1 if precision in ("bf16", "fp16") else 2)
    return PARAMETERS_M.get(backbone, 30.0) * 1e6 * 16 + batch * bytes_per_pixel * image_size * image_size


def resolve_batch_size(requested: int | str, fp: Fingerprint, machine: Machine, *, stage_name: str,
                       image_size: int, backbone: str) -> Resolved:
    """``stageN.batch_size`` per process (see the module docstring for the rule)."""
    key = f"{stage_name}.batch_size"
    if not _requested(requested):
        return Resolved(key, int(requested), requested, f"{key}: {requested} (set explicitly)")
    cap = BATCH_CAP[machine.kind]
    per_rank = max(1, fp.train_samples // max(1, machine.world_size))
    steps_limit = max(MIN_BATCH, per_rank // MIN_STEPS_PER_EPOCH)
    budget = MEMORY_FRACTION * machine.free_memory_bytes if machine.free_memory_bytes else None
    batch, limit, candidate = MIN_BATCH, None, 2 * MIN_BATCH
    while candidate <= cap:
        if candidate > steps_limit:
            limit = f"at least {MIN_STEPS_PER_EPOCH} optimizer steps per epoch over {per_rank} training images"
            break
        if budget is not None and estimated_memory(backbone, image_size, candidate, machine.precision) > budget:
            limit = (f"its estimated memory within {MEMORY_FRACTION:.0%} of the "
                     f"{machine.free_memory_bytes / 2**30:.1f} GiB free")
            break
        batch, candidate = candidate, candidate * 2
    reason = f"the largest power of two up to {cap} per process on a {machine.kind.upper()}"
    return Resolved(key, batch, requested, reason + (f" that keeps {limit}" if limit else "")
                    + (f" (at least {MIN_BATCH})" if batch == MIN_BATCH else ""))


def resolve_epochs(requested: int | str, fp: Fingerprint, machine: Machine, *, stage_name: str, batch_size: int,
                   accumulate: int = 1, time_budget_s: float | None = None, max_steps: int | None = None
                   ) -> Resolved:
    """``stageN.epochs`` (see the module docstring for the rule)."""
    key = f"{stage_name}.epochs"
    if not _requested(requested):
        return Resolved(key, int(requested), requested, f"{key}: {requested} (set explicitly)")
    if time_budget_s is not None and max_steps is None:  # the engine sizes the stage (and its schedules) to the budget
        return Resolved(key, AUTO, requested, f"as long as the time budget of {time_budget_s:g} s: the stage measures "
                                              "its step time and the LR and loss-weight schedules span the budget")
    per_step = batch_size * accumulate * max(1, machine.world_size)
    steps_per_epoch = max(1, math.ceil(fp.train_samples / per_step))
    low, high = STAGE2_EPOCHS
    stage2 = min(high, max(low, round(STEPS_TARGET / steps_per_epoch)))
    divisor, minimum = STAGE_EPOCHS.get(stage_name, (1, low))
    epochs = max(minimum, stage2 // divisor)
    share = {"stage1": "a tenth of stage2's", "stage3": "a fifth of stage2's"}.get(stage_name, "")
    reason = (f"{steps_per_epoch} optimizer steps per epoch: stage2 aims at about {STEPS_TARGET:,} steps "
              f"({low}–{high} epochs: {stage2})" + (f", {stage_name} {share} (at least {minimum})" if share else ""))
    if max_steps is not None:
        reason += f"; max_steps {max_steps} sets the length instead"
    return Resolved(key, epochs, requested, reason)


def resolve_imbalance(sampler: str, class_weights: Any, fp: Fingerprint, *, stage_name: str
                      ) -> tuple[Resolved, Resolved]:
    """``stageN.sampler`` and ``stageN.loss.class_weights`` (see the module docstring for the rules)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"{stage_name}.sampler must be one of {list(SAMPLERS)}, got {sampler!r}")
    ratio = fp.imbalance_ratio
    imbalanced = ratio > IMBALANCE_RATIO
    facts = (f"the largest image class has {ratio:.1f}x the training images of the smallest "
             f"({'more' if imbalanced else 'not more'} than {IMBALANCE_RATIO:g}x)")
    key = f"{stage_name}.sampler"
    if _requested(sampler):
        sampled = Resolved(key, "uniform", sampler, "every training image once per epoch: the loss weights handle "
                                                    "the imbalance, because drawing a rare class's few images again "
                                                    "and again lets the network memorise them")
    else:
        sampled = Resolved(key, sampler, sampler, f"{key}: {sampler} (set explicitly)")
    key = f"{stage_name}.loss.class_weights"
    if not _requested(class_weights):
        return sampled, Resolved(key, class_weights, class_weights, f"{key}: {class_weights} (set explicitly)")
    if not imbalanced:
        return sampled, Resolved(key, "none", AUTO, facts)
    if sampled.value == "balanced":
        return sampled, Resolved(key, "none", AUTO, facts + ", but the balanced sampler already evens the "
                                                            "classes out (weights too would over-correct)")
    return sampled, Resolved(key, "sqrt", AUTO, facts + ": the loss weighs each class by 1/sqrt(its training "
                                                        "images), scaled to average 1 over the images")


def loss_class_weights(kind: str, counts: Sequence[int]) -> list[float]:
    """Per-class weights of the classification loss from the training images per class (index order).

    ``balanced``: ``total / (classes x n_c)``; ``sqrt``: ``1 / sqrt(n_c)`` scaled so that the weights
    average 1 over the training images (``sum(n_c w_c) = total``, as ``balanced`` does). A class
    without training images counts as one image.
    """
    if kind not in CLASS_WEIGHTS:
        raise ValueError(f"loss.class_weights must be one of {list(CLASS_WEIGHTS)} to be computed, got {kind!r}")
    if len(counts) == 0:
        raise ValueError("class weights need at least one class")
    n = [max(1, int(c)) for c in counts]
    total = sum(n)
    if kind == "balanced":
        return [total / (len(n) * c) for c in n]
    raw = [1.0 / math.sqrt(c) for c in n]
    scale = total / sum(c * w for c, w in zip(n, raw, strict=True))
    return [w * scale for w in raw]


def sampling_weights(labels: Sequence[int]) -> list[float]:
    """Per-sample weights of the balanced sampler: ``1 / sqrt(count of the sample's class)``.

    A class of ``n`` images then gets a share of the draws proportional to ``sqrt(n)``.
    """
    if len(labels) == 0:
        raise ValueError("balanced sampling needs at least one training sample")
    counts: dict[int, int] = {}
    for label in labels:
        counts[int(label)] = counts.get(int(label), 0) + 1
    return [1.0 / math.sqrt(counts[int(label)]) for label in labels]


def class_shares(labels: Sequence[int], weights: Sequence[float]) -> dict[int, float]:
    """The expected share of draws each class gets under ``weights`` (for the log and the tests)."""
    total = float(sum(weights))
    shares: dict[int, float] = {}
    for label, weight in zip(labels, weights, strict=True):
        shares[int(label)] = shares.get(int(label), 0.0) + weight / total
    return shares


def plan_stage(fp: Fingerprint, machine: Machine, *, stage_name: str, requested: Mapping[str, Any], stride: int,
               backbone: str, accumulate: int = 1, time_budget_s: float | None = None,
               max_steps: int | None = None) -> StagePlanAuto:
    """Resolve a stage's settings; ``requested`` holds ``image_size``, ``batch_size``, ``epochs``, ``sampler``
    and ``class_weights`` as written (``auto`` or a value). The rules run in dependency order: the batch
    needs the image size, the epochs the batch."""
    plan = StagePlanAuto(fp, machine)
    image = resolve_image_size(requested["image_size"], fp, machine, stride=stride)
    batch = resolve_batch_size(requested["batch_size"], fp, machine, stage_name=stage_name, image_size=image.value,
                               backbone=backbone)
    epochs = resolve_epochs(requested["epochs"], fp, machine, stage_name=stage_name, batch_size=batch.value,
                            accumulate=accumulate, time_budget_s=time_budget_s, max_steps=max_steps)
    sampler, weights = resolve_imbalance(requested["sampler"], requested["class_weights"], fp, stage_name=stage_name)
    plan.settings.update(image_size=image, batch_size=batch, epochs=epochs, sampler=sampler, class_weights=weights)
    return plan
