"""Checks that keep the fixed operating point when a tuned one would not help.

Threshold tuning maximises one criterion on the validation split, and it finds a maximum even
for a model without signal — usually a trivial one: the best F1 of the defect class comes from
calling every image a defect. Such a point can cost far more than it gains (accuracy 66 % → 14 %
on a collapsed model). So each part of a tuned operating point is used only when it passes these
checks on the tuning split; otherwise that part keeps the fixed value (0.5 / 0.5 / 0 px / plain
argmax) and the reason is recorded (first failing check, in this order):

* **image** part (image threshold and per-class thresholds):
  ``cannot_tune`` — the image threshold fell back (a split without defect or without good images);
  ``no_signal`` — the image AUROC is not above 0.5 by ``signal_sigmas`` standard deviations of the
  AUROC a random scorer gets on the same counts (Mann–Whitney: ``sqrt((P + N + 1) / (12 P N))``;
  without a defect-free class, macro one-vs-rest over the classes);
  ``not_better_than_trivial`` — the point does not beat calling every image a defect, or none, on
  the tuning criterion;
  ``accuracy_drop`` — accuracy falls by more than ``max_accuracy_drop`` from the fixed point's.
* **pixel** part (pixel threshold and minimum area):
  ``cannot_tune`` — no defect pixel; ``not_better_than_trivial`` — Dice (IoU) does not beat calling
  every pixel a defect, or none; ``miou_drop`` — mIoU (background included) falls by more than
  ``max_miou_drop``. Minimum areas are chosen only among those within the same mIoU tolerance.

Pure functions on arrays and on the streaming counts of :mod:`defect_pipeline.ml.thresholds`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torchmetrics.functional.classification import binary_auroc

from defect_pipeline.ml.labels import LabelSpace
from defect_pipeline.ml.metrics import iou_from_confusion
from defect_pipeline.ml.postprocess import Thresholds, decide_labels
from defect_pipeline.ml.thresholds import PixelConfusion, ThresholdChoice, pixel_score

FIXED = Thresholds()
_EPS = 1e-12


@dataclass(frozen=True)
class CheckRules:
    """How much evidence a tuned operating point needs (the ``thresholds.*`` parameters of the same names)."""

    signal_sigmas: float = 2.0
    max_accuracy_drop: float = 0.02
    max_miou_drop: float = 0.02

    def __post_init__(self) -> None:
        if not self.signal_sigmas >= 0:
            raise ValueError(f"thresholds.signal_sigmas must be >= 0, got {self.signal_sigmas}")
        for name in ("max_accuracy_drop", "max_miou_drop"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"thresholds.{name} must be within [0, 1], got {getattr(self, name)}")


@dataclass
class Verdict:
    """Whether the tuned values of one part (``image`` or ``pixel``) are used, and why not."""

    part: str
    use_tuned: bool
    reason: str | None = None
    message: str | None = None
    checks: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _verdict(part: str, checks: dict[str, Any], failures: list[tuple[str, str]]) -> Verdict:
    if not failures:
        return Verdict(part, True, checks=checks)
    reason, message = failures[0]
    return Verdict(part, False, reason, message, checks)


def within_tolerance(tuned: float, fixed: float, max_drop: float) -> bool:
    """The tolerance rule: a tuned value may be lower than the fixed point's by at most ``max_drop``."""
    return tuned >= fixed - max_drop - _EPS


def null_auroc_std(positives: int, negatives: int) -> float:
    """Standard deviation of the AUROC of a random scorer on ``positives`` vs ``negatives`` (Mann–Whitney U)."""
    if positives < 1 or negatives < 1:
        raise ValueError(f"AUROC needs positives and negatives, got {positives} and {negatives}")
    return math.sqrt((positives + negatives + 1) / (12.0 * positives * negatives))


def image_signal(class_probs: np.ndarray, targets: np.ndarray, labels: LabelSpace, *, sigmas: float
                 ) -> dict[str, Any]:
    """Image AUROC on the split, the AUROC a random scorer would need to reach it, and whether it is signal."""
    class_probs, targets = np.asarray(class_probs, dtype=np.float64), np.asarray(targets)
    if labels.has_good:
        kind, pairs = "defect vs good", [(1.0 - class_probs[:, 0], targets > 0)]
    else:
        kind = "macro one-vs-rest over the classes"
        pairs = [(class_probs[:, i], targets == i) for i in range(labels.num_image_classes)]
    aurocs, stds = [], []
    for score, positive in pairs:
        n_pos, n_neg = int(positive.sum()), int((~positive).sum())
        if n_pos and n_neg:
            aurocs.append(float(binary_auroc(torch.from_numpy(np.ascontiguousarray(score)),
                                             torch.from_numpy(positive.astype(np.int64)))))
            stds.append(null_auroc_std(n_pos, n_neg))
    if not aurocs:
        return {"auroc": None, "kind": kind, "chance_std": None, "required": None, "ok": False}
    # the mean of the per-class spreads bounds the spread of the macro mean from above: the conservative side
    auroc, std = float(np.mean(aurocs)), float(np.mean(stds))
    required = 0.5 + sigmas * std
    return {"auroc": auroc, "kind": kind, "chance_std": std, "required": required, "ok": auroc > required}


def criterion_value(point: Mapping[str, Any], criterion: str, target: float | None) -> float | None:
    """What the image criterion maximises at an operating point; None where the point misses the target.

    ``max_f1``: F1 of the defect class; ``target_false_alarm_rate``: recall at a false-alarm rate within
    the target; ``target_recall``: ``1 - false-alarm rate`` at a recall reaching the target.
    """
    if criterion == "max_f1":
        return float(point["f1"])
    if criterion == "target_false_alarm_rate":
        return float(point["recall"]) if point["false_alarm_rate"] <= target + _EPS else None
    if criterion == "target_recall":
        return 1.0 - float(point["false_alarm_rate"]) if point["recall"] >= target - _EPS else None
    raise ValueError(f"unknown threshold criterion {criterion!r}")


def trivial_image_points(positives: int, negatives: int) -> dict[str, dict[str, float]]:
    """The operating points of calling every image a defect (``all_defect``) and none (``all_good``)."""
    total = positives + negatives
    return {"all_defect": {"precision": positives / total if total else 0.0, "recall": 1.0,
                           "f1": 2 * positives / (2 * positives + negatives) if total else 0.0,
                           "false_alarm_rate": 1.0},
            "all_good": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "false_alarm_rate": 0.0}}


def beats_trivial_image(choice: ThresholdChoice, criterion: str, target: float | None) -> dict[str, Any]:
    """Does the tuned image threshold beat both trivial points on its own criterion (strictly)?"""
    tuned = criterion_value(choice.to_dict(with_curve=False), criterion, target)
    trivial = {name: criterion_value(point, criterion, target)
               for name, point in trivial_image_points(choice.positives, choice.negatives).items()}
    reachable = [value for value in trivial.values() if value is not None]
    ok = tuned is not None and all(tuned > value + _EPS for value in reachable)
    return {"criterion": criterion, "tuned": tuned, "trivial": trivial, "ok": ok}


def accuracy(predicted: np.ndarray, targets: np.ndarray) -> float:
    predicted, targets = np.asarray(predicted), np.asarray(targets)
    return float((predicted == targets).mean()) if targets.size else 0.0


def segmentation_scores(confusion: np.ndarray) -> dict[str, float]:
    """``miou`` (background included, classes absent from target and prediction left out), and defect vs
    background ``dice`` and ``iou`` of a (target x prediction) matrix — the rules of ``MultitaskMetrics``."""
    iou = iou_from_confusion(torch.from_numpy(np.asarray(confusion)))
    present = iou[~iou.isnan()]
    tp, fp, fn = confusion[1:, 1:].sum(), confusion[0, 1:].sum(), confusion[1:, 0].sum()
    return {"miou": float(present.mean()) if present.numel() else 0.0,
            "dice": float(pixel_score(tp, fp, fn, "dice")), "iou": float(pixel_score(tp, fp, fn, "iou"))}


def judge_image(class_probs: np.ndarray, targets: np.ndarray, labels: LabelSpace, choice: ThresholdChoice,
                per_class: dict[str, float], *, criterion: str, target: float | None, rules: CheckRules) -> Verdict:
    """The image part's verdict: the image threshold of ``choice`` with ``per_class``, against the fixed point."""
    targets = np.asarray(targets)
    tuned = Thresholds(image=choice.threshold if labels.has_good else FIXED.image, per_class=per_class)
    signal = image_signal(class_probs, targets, labels, sigmas=rules.signal_sigmas)
    acc = {"fixed": accuracy(decide_labels(class_probs, labels, FIXED), targets),
           "tuned": accuracy(decide_labels(class_probs, labels, tuned), targets),
           "max_drop": rules.max_accuracy_drop}
    acc["ok"] = within_tolerance(acc["tuned"], acc["fixed"], rules.max_accuracy_drop)
    checks: dict[str, Any] = {"signal": signal, "accuracy": acc}
    failures: list[tuple[str, str]] = []
    if labels.has_good and choice.fallback:
        failures.append(("cannot_tune", choice.warning or "the image threshold fell back"))
    if not signal["ok"]:
        failures.append(("no_signal", _no_signal_message(signal, targets, labels, rules.signal_sigmas)))
    if labels.has_good and not choice.fallback:
        checks["trivial"] = trivial = beats_trivial_image(choice, criterion, target)
        if not trivial["ok"]:
            failures.append(("not_better_than_trivial", _trivial_message(trivial, "image")))
    if not acc["ok"]:
        failures.append(("accuracy_drop", f"accuracy on the split would fall from {acc['fixed']:.3f} to "
                                          f"{acc['tuned']:.3f}, more than thresholds.max_accuracy_drop = "
                                          f"{rules.max_accuracy_drop}"))
    return _verdict("image", checks, failures)


def judge_pixel(confusion: PixelConfusion, choice: ThresholdChoice, *, metric: str, rules: CheckRules) -> Verdict:
    """The pixel part's verdict at the tuned pixel threshold and no minimum area, against the fixed point."""
    if choice.fallback:
        return Verdict("pixel", False, "cannot_tune", choice.warning or "the pixel threshold fell back")
    fixed = segmentation_scores(confusion.confusion_at(FIXED.pixel))
    tuned = segmentation_scores(confusion.confusion_at(choice.threshold))
    defects, background = int(confusion.counts[:, 1:, :].sum()), int(confusion.counts[:, 0, :].sum())
    trivial = {"criterion": f"max_{metric}", "tuned": tuned[metric],
               "trivial": {"all_defect": float(pixel_score(defects, background, 0, metric)), "all_background": 0.0}}
    trivial["ok"] = all(tuned[metric] > value + _EPS for value in trivial["trivial"].values())
    miou = {"fixed": fixed["miou"], "tuned": tuned["miou"], "max_drop": rules.max_miou_drop,
            "ok": within_tolerance(tuned["miou"], fixed["miou"], rules.max_miou_drop)}
    failures = []
    if not trivial["ok"]:
        failures.append(("not_better_than_trivial", _trivial_message(trivial, "pixel")))
    if not miou["ok"]:
        failures.append(("miou_drop", _miou_message(miou["fixed"], miou["tuned"], rules)))
    return _verdict("pixel", {"trivial": trivial, "miou": miou}, failures)


class AreaConfusion:
    """Segmentation confusion for each minimum-area candidate, from masks decided with no minimum area."""

    def __init__(self, candidates: Iterable[int], num_classes: int):
        self.candidates = sorted(set(int(c) for c in candidates) | {0})
        self.num_classes = num_classes
        self.matrices = {c: np.zeros((num_classes, num_classes), dtype=np.int64) for c in self.candidates}

    def update(self, predicted: np.ndarray, truth: np.ndarray) -> None:
        """``predicted``: class indices at min area 0; ``truth``: true class indices (same shape)."""
        import cv2

        predicted, truth = np.asarray(predicted, dtype=np.int64), np.asarray(truth, dtype=np.int64)
        _, components, stats, _ = cv2.connectedComponentsWithStats((predicted > 0).astype(np.uint8), connectivity=8)
        areas = stats[:, cv2.CC_STAT_AREA][components]  # each pixel's region size (background pixels: predicted 0)
        c = self.num_classes
        for candidate, matrix in self.matrices.items():
            kept = np.where(areas >= candidate, predicted, 0)  # remove_small_regions' rule (1 keeps all)
            matrix += np.bincount((truth * c + kept).reshape(-1), minlength=c * c).reshape(c, c)

    def miou(self) -> dict[int, float]:
        return {candidate: segmentation_scores(matrix)["miou"] for candidate, matrix in self.matrices.items()}


def min_areas_within_tolerance(areas: AreaConfusion, fixed_miou: float, rules: CheckRules) -> dict[str, Any]:
    """mIoU of every minimum-area candidate and the ones whose drop from the fixed point is within tolerance."""
    miou = areas.miou()
    allowed = [c for c, value in miou.items() if within_tolerance(value, fixed_miou, rules.max_miou_drop)]
    return {"fixed_miou": fixed_miou, "miou": miou, "allowed": allowed,
            "message": None if allowed else _miou_message(fixed_miou, max(miou.values()), rules)}


def thresholds_status(verdicts: Iterable[Verdict]) -> str:
    """``tuned``, or ``kept_fixed:<part>_<reason>[,...]`` naming each part that kept its fixed value."""
    kept = [f"{v.part}_{v.reason}" for v in verdicts if not v.use_tuned]
    return "kept_fixed:" + ",".join(kept) if kept else "tuned"


def checked_thresholds(image: ThresholdChoice, pixel: ThresholdChoice, per_class: dict[str, float], min_area: int,
                        verdicts: dict[str, Verdict], *, base: str) -> tuple[Thresholds, str]:
    """The operating point — each part tuned or fixed, as its verdict says — with its source text and status."""
    fixed = FIXED
    use_image, use_pixel = verdicts["image"].use_tuned, verdicts["pixel"].use_tuned
    kept = [f"{v.part} kept at the fixed value: {v.message}" for v in verdicts.values() if not v.use_tuned]
    source = base if not kept else \
        f"{base}; {'; '.join(kept)}" if use_image or use_pixel else \
        f"fixed: {fixed.image} / {fixed.pixel} / {fixed.min_area} px kept, {base.replace('tuned on', 'tuning on')} " \
        f"would not help; {'; '.join(kept)}"
    thresholds = Thresholds(image=image.threshold if use_image else fixed.image,
                            pixel=pixel.threshold if use_pixel else fixed.pixel,
                            min_area=min_area if use_pixel else fixed.min_area,
                            per_class=per_class if use_image else {}, source=source)
    return thresholds, thresholds_status(verdicts.values())


def _no_signal_message(signal: dict[str, Any], targets: np.ndarray, labels: LabelSpace, sigmas: float) -> str:
    if signal["auroc"] is None:
        return "no signal can be measured: the split has a single image class"
    counts = (f"{int((targets > 0).sum())} defect / {int((targets == 0).sum())} good images" if labels.has_good
              else f"the {len(targets)} images' class counts")
    return (f"no signal: image AUROC {signal['auroc']:.3f} ({signal['kind']}) is not above "
            f"{signal['required']:.3f} = 0.5 + {sigmas:g} × {signal['chance_std']:.3f}, the spread of a random "
            f"scorer's AUROC on {counts} (thresholds.signal_sigmas)")


def _trivial_message(trivial: dict[str, Any], what: str) -> str:
    values = ", ".join(f"{name} {'unreachable' if v is None else f'{v:.3f}'}"
                       for name, v in trivial["trivial"].items())
    tuned = "–" if trivial["tuned"] is None else f"{trivial['tuned']:.3f}"
    return f"the tuned {what} threshold ({trivial['criterion']} {tuned}) does not beat the trivial points ({values})"


def _miou_message(fixed: float, tuned: float, rules: CheckRules) -> str:
    return (f"mIoU on the split would fall from {fixed:.3f} to {tuned:.3f}, more than thresholds.max_miou_drop "
            f"= {rules.max_miou_drop}")
