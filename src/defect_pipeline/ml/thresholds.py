"""Choosing operating points on validation predictions.

Four kinds of threshold, each an explicit, recorded choice:

* **image** — defect vs good on ``defect_score = 1 - p(good)``, by a criterion:
  ``max_f1`` (best F1 of the defect class), ``target_false_alarm_rate`` (the lowest threshold whose
  false-alarm rate on good images is at most ``target``: the most defects caught at that rate) or
  ``target_recall`` (the highest threshold that still finds at least ``target`` of the defect
  images: the fewest false alarms at that recall).
* **pixel** — on the defect probability of each pixel, maximising Dice (or IoU) over all
  validation pixels, computed from streaming histograms (memory does not grow with the data).
* **min_area** — the smallest region kept, among candidates, maximising the same pixel metric.
* **per_class** — one-vs-rest max-F1 thresholds per defect class, kept only when they raise the
  macro F1 among defect images over the plain argmax *and* the images they turn right outnumber those
  they turn wrong by more than noise (McNemar: ``better - worse > sigmas * sqrt(better + worse)``,
  ``sigmas`` = ``thresholds.signal_sigmas``): a gain of a few images on val is as likely to be a loss
  on test (NEU-Seg: +2 val images, −2 test images).

Guards: a validation set without defect images or without good images (or without defect
pixels) cannot place a threshold; the choice falls back to the default 0.5 with a warning that
says why, and ``fallback: true`` is recorded — never a degenerate 0 or 1. Whether a tuned choice
is then used at all is decided by :mod:`defect_pipeline.ml.threshold_checks`, from the streaming
counts kept here (:class:`PixelConfusion`: the segmentation confusion at every pixel threshold).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torchmetrics.functional.classification import (
    binary_precision_recall_curve,
    binary_roc,
    multiclass_confusion_matrix,
)

from defect_pipeline.ml.labels import LabelSpace
from defect_pipeline.ml.metrics import f1_from_confusion

logger = logging.getLogger(__name__)

Criterion = Literal["max_f1", "target_false_alarm_rate", "target_recall"]
DEFAULT_THRESHOLD = 0.5


@dataclass
class ThresholdChoice:
    """A chosen threshold with the operating point it gives on the data it was tuned on."""

    threshold: float
    criterion: str
    target: float | None = None
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    false_alarm_rate: float | None = None
    fallback: bool = False
    warning: str | None = None
    positives: int = 0
    negatives: int = 0
    curve: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self, with_curve: bool = True) -> dict[str, Any]:
        out = asdict(self)
        if not with_curve:
            out.pop("curve")
        return out


def _fallback(criterion: str, target: float | None, why: str, positives: int, negatives: int) -> ThresholdChoice:
    message = f"{why}; threshold falls back to the default {DEFAULT_THRESHOLD}"
    logger.warning(message)
    return ThresholdChoice(DEFAULT_THRESHOLD, criterion, target, fallback=True, warning=message,
                           positives=positives, negatives=negatives)


def _operating_point(scores: np.ndarray, positive: np.ndarray, threshold: float) -> dict[str, float]:
    predicted = scores >= threshold
    tp = int((predicted & positive).sum())
    fp = int((predicted & ~positive).sum())
    fn = int((~predicted & positive).sum())
    negatives = int((~positive).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return {"precision": precision, "recall": recall, "f1": f1,
            "false_alarm_rate": fp / negatives if negatives else 0.0}


def select_threshold(scores: np.ndarray, positive: np.ndarray, *, criterion: Criterion = "max_f1",
                     target: float | None = None, name: str = "image") -> ThresholdChoice:
    """Choose a decision threshold on ``scores`` for the binary target ``positive`` (see module doc)."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    positive = np.asarray(positive, dtype=bool).reshape(-1)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if criterion not in ("max_f1", "target_false_alarm_rate", "target_recall"):
        raise ValueError(f"unknown threshold criterion {criterion!r}: use max_f1, target_false_alarm_rate or "
                         "target_recall")
    if criterion != "max_f1" and (target is None or not 0.0 <= target <= 1.0):
        raise ValueError(f"criterion {criterion} needs a target within [0, 1], got {target!r}")
    if n_pos == 0:
        return _fallback(criterion, target, f"{name} threshold: the validation data has no positive (defect) "
                                            f"sample among {n_neg}", n_pos, n_neg)
    if n_neg == 0:
        return _fallback(criterion, target, f"{name} threshold: the validation data has no negative (good) "
                                            f"sample among {n_pos}", n_pos, n_neg)
    preds = torch.from_numpy(scores)  # float64: float32 thresholds would not match the scores they came from
    tgt = torch.from_numpy(positive.astype(np.int64))
    precision, recall, pr_thresholds = binary_precision_recall_curve(preds, tgt)
    fpr, tpr, roc_thresholds = binary_roc(preds, tgt)
    curve = {"pr_threshold": pr_thresholds.tolist(), "precision": precision[:-1].tolist(),
             "recall": recall[:-1].tolist(), "roc_threshold": roc_thresholds.clamp(max=1.0).tolist(),
             "false_alarm_rate": fpr.tolist(), "true_positive_rate": tpr.tolist()}
    if criterion == "max_f1":
        p, r = precision[:-1].double(), recall[:-1].double()
        f1 = torch.where(p + r > 0, 2 * p * r / (p + r).clamp_min(1e-12), torch.zeros_like(p))
        threshold = float(pr_thresholds[int(torch.argmax(f1))])
    else:
        # roc thresholds descend; the first one is +inf-like (nothing predicted positive)
        finite = roc_thresholds <= 1.0
        if criterion == "target_false_alarm_rate":
            ok = finite & (fpr <= target + 1e-12)
            index = int(torch.nonzero(ok)[-1]) if ok.any() else None  # lowest threshold within the rate
        else:
            ok = finite & (tpr >= target - 1e-12)
            index = int(torch.nonzero(ok)[0]) if ok.any() else None  # highest threshold reaching the recall
        if index is None:
            return _fallback(criterion, target, f"{name} threshold: no threshold reaches {criterion} = {target}",
                             n_pos, n_neg)
        threshold = float(roc_thresholds[index])
    point = _operating_point(scores, positive, threshold)
    return ThresholdChoice(threshold, criterion, target, positives=n_pos, negatives=n_neg, curve=curve, **point)


class PixelHistogram:
    """Streaming per-bin counts of defect-pixel probabilities for defect and background pixels."""

    def __init__(self, bins: int = 200):
        self.bins = bins
        self.positive = np.zeros(bins, dtype=np.int64)
        self.negative = np.zeros(bins, dtype=np.int64)

    def update(self, probs: np.ndarray, is_defect: np.ndarray) -> None:
        index = np.clip((np.asarray(probs, dtype=np.float64) * self.bins).astype(np.int64), 0, self.bins - 1)
        is_defect = np.asarray(is_defect, dtype=bool)
        self.positive += np.bincount(index[is_defect], minlength=self.bins)
        self.negative += np.bincount(index[~is_defect], minlength=self.bins)

    def counts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Thresholds (bin lower edges) and TP, FP, FN when pixels ``>= threshold`` are defects."""
        thresholds = np.arange(self.bins) / self.bins
        tp = np.cumsum(self.positive[::-1])[::-1]
        fp = np.cumsum(self.negative[::-1])[::-1]
        fn = self.positive.sum() - tp
        return thresholds, tp, fp, fn


class PixelConfusion:
    """Streaming segmentation confusion for every pixel threshold at once.

    Counts pixels by (probability bin, true class, class the pixel gets when called a defect), so
    the confusion matrix (rows = target, columns = prediction; class 0 = background) at any
    threshold on the bin grid is a sum over bins — the same matrix :class:`~defect_pipeline.ml.
    metrics.MultitaskMetrics` would accumulate from :func:`~defect_pipeline.ml.postprocess.decide`'s
    masks at that threshold and no minimum area. Memory: ``bins x classes²`` counts.
    """

    def __init__(self, num_classes: int, bins: int = 200):
        if num_classes < 2:
            raise ValueError(f"a segmentation confusion needs >= 2 classes (background + defects), got {num_classes}")
        self.bins, self.num_classes = bins, num_classes
        self.counts = np.zeros((bins, num_classes, num_classes), dtype=np.int64)

    def update(self, probs: np.ndarray, truth: np.ndarray, defect_class: np.ndarray) -> None:
        """``probs``: defect probability per pixel; ``truth``: true class index; ``defect_class``: the class
        index (>= 1) the pixel gets when called a defect."""
        index = np.clip((np.asarray(probs, dtype=np.float64) * self.bins).astype(np.int64), 0, self.bins - 1)
        c = self.num_classes
        truth = np.asarray(truth, dtype=np.int64)
        if truth.size and (truth.min() < 0 or truth.max() >= c):
            raise ValueError(f"mask values must be class indices 0..{c - 1} (background + defect classes), found "
                             f"{int(truth.min())}..{int(truth.max())}: check data.classes and the masks' encoding")
        flat = (index * c + truth) * c + np.asarray(defect_class, dtype=np.int64)
        self.counts += np.bincount(flat.reshape(-1), minlength=self.bins * c * c).reshape(self.bins, c, c)

    def confusion_at(self, threshold: float) -> np.ndarray:
        """The (target x prediction) matrix when pixels with probability ``>= threshold`` are defects."""
        first = int(np.clip(np.ceil(threshold * self.bins - 1e-9), 0, self.bins))  # first bin called a defect
        matrix = self.counts[first:].sum(axis=0)
        matrix[:, 0] += self.counts[:first].sum(axis=(0, 2))
        return matrix

    def histogram(self) -> PixelHistogram:
        """Defect vs background counts per bin (what :func:`select_pixel_threshold` reads)."""
        histogram = PixelHistogram(self.bins)
        histogram.positive = self.counts[:, 1:, :].sum(axis=(1, 2))
        histogram.negative = self.counts[:, 0, :].sum(axis=1)
        return histogram


def pixel_score(tp: Any, fp: Any, fn: Any, metric: str) -> np.ndarray:
    tp, fp, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn))
    if metric == "dice":
        den = 2 * tp + fp + fn
        return np.divide(2 * tp, den, out=np.zeros_like(tp), where=den > 0)
    den = tp + fp + fn
    return np.divide(tp, den, out=np.zeros_like(tp), where=den > 0)


def select_pixel_threshold(histogram: PixelHistogram, *, metric: Literal["dice", "iou"] = "dice") -> ThresholdChoice:
    """The pixel threshold maximising Dice (or IoU) over all pixels in the histogram."""
    thresholds, tp, fp, fn = histogram.counts()
    n_pos, n_neg = int(histogram.positive.sum()), int(histogram.negative.sum())
    criterion = f"max_{metric}"
    if n_pos == 0:
        return _fallback(criterion, None, f"pixel threshold: the validation masks have no defect pixel among "
                                          f"{n_neg}", n_pos, n_neg)
    scores = np.where(thresholds > 0, pixel_score(tp, fp, fn, metric), -1.0)  # 0 would call every pixel a defect
    # where several bins tie (no pixel falls between them), take the middle of that plateau: the
    # threshold with the most margin on both sides
    best = np.flatnonzero(scores >= scores.max() - 1e-12)
    first = int(best[0])
    last = first
    while last + 1 < len(scores) and scores[last + 1] >= scores.max() - 1e-12:
        last += 1
    index = (first + last) // 2
    precision = tp[index] / (tp[index] + fp[index]) if tp[index] + fp[index] else 0.0
    recall = tp[index] / n_pos
    step = max(1, len(thresholds) // 100)
    curve = {"threshold": thresholds[::step].tolist(), metric: scores[::step].tolist()}
    return ThresholdChoice(float(thresholds[index]), criterion, precision=float(precision), recall=float(recall),
                           f1=float(pixel_score(tp[index], fp[index], fn[index], "dice")), positives=n_pos,
                           negatives=n_neg, curve=curve)


class RegionStats:
    """Per predicted region: its area and how many of its pixels are true defect pixels."""

    def __init__(self) -> None:
        self.areas: list[int] = []
        self.overlaps: list[int] = []
        self.true_pixels = 0

    def update(self, predicted: np.ndarray, is_defect: np.ndarray) -> None:
        import cv2

        predicted = np.asarray(predicted, dtype=bool)
        is_defect = np.asarray(is_defect, dtype=bool)
        self.true_pixels += int(is_defect.sum())
        if not predicted.any():
            return
        count, components = cv2.connectedComponents(predicted.astype(np.uint8), connectivity=8)
        areas = np.bincount(components.reshape(-1), minlength=count)
        overlaps = np.bincount(components.reshape(-1), weights=is_defect.reshape(-1), minlength=count)
        self.areas.extend(int(a) for a in areas[1:])
        self.overlaps.extend(int(o) for o in overlaps[1:])


def select_min_area(stats: RegionStats, candidates: list[int], *, metric: Literal["dice", "iou"] = "dice",
                    allowed: Collection[int] | None = None) -> dict[str, Any]:
    """The candidate minimum area maximising the pixel metric (ties → the smallest area).

    ``allowed``: the candidates that may be chosen (None: all), e.g. those that pass the checks of
    :mod:`defect_pipeline.ml.threshold_checks`; with none allowed, 0 (keep every region) is returned.
    """
    areas = np.asarray(stats.areas, dtype=np.int64)
    overlaps = np.asarray(stats.overlaps, dtype=np.int64)
    rows = []
    for candidate in sorted(set(int(c) for c in candidates) | {0}):
        kept = areas >= candidate
        tp = int(overlaps[kept].sum())
        fp = int((areas[kept] - overlaps[kept]).sum())
        fn = stats.true_pixels - tp
        rows.append({"min_area": candidate, metric: float(pixel_score(tp, fp, fn, metric)),
                     "regions_kept": int(kept.sum())})
    choosable = [row for row in rows if allowed is None or row["min_area"] in allowed] or [rows[0]]
    best = max(choosable, key=lambda row: (row[metric], -row["min_area"]))
    return {"min_area": best["min_area"], "metric": metric, "score": best[metric], "candidates": rows}


def select_class_thresholds(class_probs: np.ndarray, targets: np.ndarray, labels: LabelSpace, *,
                            sigmas: float = 2.0) -> tuple[dict[str, float], dict[str, Any]]:
    """One-vs-rest max-F1 thresholds per defect class, kept only when they raise the macro F1 among defects
    over the plain argmax (on these images) and the defect images they decide differently favour them by
    more than ``sigmas`` standard deviations of chance (see the module docstring); also the report."""
    offset = 1 if labels.has_good else 0
    defect_rows = targets >= offset  # the class decision only matters on defect images
    choices = {}
    for i, name in enumerate(labels.defect_classes):
        choice = select_threshold(class_probs[defect_rows, offset + i], targets[defect_rows] == offset + i,
                                  name=f"class {name}")
        choices[name] = choice
    per_class = {name: max(c.threshold, 1e-3) for name, c in choices.items() if not c.fallback}
    if len(per_class) < len(labels.defect_classes):
        return {}, {"used": False, "reason": "a class has no validation positives or negatives",
                    "candidates": {k: v.to_dict(with_curve=False) for k, v in choices.items()}}

    truth = targets[defect_rows] - offset

    def decide(scale: np.ndarray) -> np.ndarray:
        return np.argmax(class_probs[defect_rows, offset:] / scale, axis=1)

    def macro_f1(predicted: np.ndarray) -> float:  # the training metric's rule: classes that never occur left out
        f1 = f1_from_confusion(multiclass_confusion_matrix(torch.from_numpy(predicted), torch.from_numpy(truth),
                                                           num_classes=len(labels.defect_classes)))
        present = f1[~f1.isnan()]
        return float(present.mean()) if present.numel() else 0.0

    argmax = decide(np.ones(len(labels.defect_classes)))
    thresholded = decide(np.asarray([per_class[c] for c in labels.defect_classes]))
    plain, scaled = macro_f1(argmax), macro_f1(thresholded)
    better = int(((thresholded == truth) & (argmax != truth)).sum())
    worse = int(((thresholded != truth) & (argmax == truth)).sum())
    required = sigmas * float(np.sqrt(better + worse))
    used = scaled > plain and better - worse > required
    return (per_class if used else {}), {
        "used": bool(used), "val_macro_f1_among_defects": {"argmax": plain, "per_class_thresholds": scaled},
        "images_changed": {"better": better, "worse": worse, "required_margin": required, "sigmas": sigmas},
        "candidates": {k: v.to_dict(with_curve=False) for k, v in choices.items()},
    }
