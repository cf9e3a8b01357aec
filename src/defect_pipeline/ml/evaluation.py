"""Threshold tuning on validation data and evaluation on test data, streaming over a manifest split.

Both read the untransformed images and masks of a split (:class:`RawSamples`), run a
:class:`~defect_pipeline.ml.predict.Predictor` in batches, and keep only what does not grow
with the data: confusion matrices, pixel histograms, one score row per image, and the k worst
predictions. Every metric is computed at each image's own size, which is what inference writes.
The evaluation's report (Markdown and figures) is drawn by :mod:`defect_pipeline.ml.evaluation_report`.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch.utils.data import DataLoader, Dataset
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    binary_precision_recall_curve,
    binary_roc,
    multiclass_auroc,
    multiclass_average_precision,
)
from tqdm.auto import tqdm

from defect_pipeline.ml.dataset import ManifestDataset
from defect_pipeline.ml.labels import LabelSpace
from defect_pipeline.ml.metrics import MultitaskMetrics
from defect_pipeline.ml.postprocess import RawOutput, Thresholds, decide
from defect_pipeline.ml.predict import Predictor
from defect_pipeline.ml.threshold_checks import (
    AreaConfusion,
    CheckRules,
    Verdict,
    checked_thresholds,
    judge_image,
    judge_pixel,
    min_areas_within_tolerance,
    thresholds_status,
)
from defect_pipeline.ml.thresholds import (
    PixelConfusion,
    RegionStats,
    ThresholdChoice,
    select_class_thresholds,
    select_min_area,
    select_pixel_threshold,
    select_threshold,
)

logger = logging.getLogger(__name__)


class RawSamples(Dataset):
    """``(image, mask, target, index)`` of a :class:`ManifestDataset` without any transform."""

    def __init__(self, dataset: ManifestDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, int, int]:
        image, mask = self.dataset.read_sample(index)
        return image, mask, int(self.dataset.targets[index]), index


def iterate(dataset: ManifestDataset, predictor: Predictor, *, batch_size: int, num_workers: int = 0,
            desc: str = "predict") -> Iterator[tuple[np.ndarray, np.ndarray, int, int, RawOutput]]:
    """Each sample with the model's raw output, in manifest order.

    A predictor's ``iter_probabilities`` (when it has one) is consumed image by image, so a tiling
    predictor holds one image's full-resolution maps at a time; any object with ``probabilities`` works.
    """
    loader = DataLoader(RawSamples(dataset), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=list)
    stream = getattr(predictor, "iter_probabilities", predictor.probabilities)
    with tqdm(total=len(dataset), desc=desc, mininterval=1.0, leave=False) as bar:
        for batch in loader:
            outputs = stream([item[0] for item in batch])
            for (image, mask, target, index), raw in zip(batch, outputs, strict=True):
                yield image, mask, target, index, raw
            bar.update(len(batch))


# ----------------------------------------------------------------------------------- thresholds


@dataclass
class TuningResult:
    thresholds: Thresholds
    report: dict[str, Any]


def _seg_truth(mask: np.ndarray, seg_mode: str) -> np.ndarray:
    """Target class index of each pixel: the mask itself, or defect (1) vs background (0) in binary mode."""
    return (mask > 0).astype(np.int64) if seg_mode == "binary" else mask.astype(np.int64)


def tune_thresholds(dataset: ManifestDataset, predictor: Predictor, *, criterion: str = "max_f1",
                    target: float | None = None, pixel_metric: str = "dice", min_area_candidates: list[int] | None = None,
                    per_class: bool = True, rules: CheckRules | None = None, batch_size: int = 16,
                    num_workers: int = 0) -> TuningResult:
    """Choose image, per-class, pixel and min-area thresholds on ``dataset`` (two passes when min-area is tuned).

    Each part (image + per class, pixel + min area) is used only when it passes the checks of
    :mod:`~defect_pipeline.ml.threshold_checks` under ``rules``; otherwise it keeps the fixed value, a
    warning says why, and ``report["status"]`` reads ``kept_fixed:<part>_<reason>`` (else ``tuned``).
    """
    labels, rules = predictor.labels, rules or CheckRules()
    seg_mode = predictor.seg_mode
    confusion = PixelConfusion(2 if seg_mode == "binary" else labels.num_seg_classes)
    defect_scores, class_rows, targets = [], [], []
    for _, mask, target_index, _, raw in iterate(dataset, predictor, batch_size=batch_size, num_workers=num_workers,
                                                 desc="thresholds: pass 1"):
        confusion.update(raw.defect_pixel_probs, _seg_truth(mask, seg_mode), raw.defect_class_map)
        class_rows.append(raw.class_probs)
        defect_scores.append(1.0 - float(raw.class_probs[0]) if labels.has_good else 1.0)
        targets.append(target_index)
    if not targets:
        raise ValueError("the split used for threshold tuning has no accepted sample")
    class_probs, targets_arr = np.stack(class_rows), np.asarray(targets)
    if labels.has_good:
        image = select_threshold(np.asarray(defect_scores), targets_arr > 0, criterion=criterion, target=target)
    else:
        image = ThresholdChoice(0.5, criterion, target, fallback=True,
                                warning="no defect-free class: every image is a defect, the image threshold "
                                        "does not apply")
    pixel = select_pixel_threshold(confusion.histogram(), metric=pixel_metric)
    classes, class_report = (select_class_thresholds(class_probs, targets_arr, labels, sigmas=rules.signal_sigmas)
                             if per_class else ({}, {"used": False, "reason": "thresholds.per_class is false"}))
    verdicts = {"image": judge_image(class_probs, targets_arr, labels, image, classes, criterion=criterion,
                                     target=target, rules=rules),
                "pixel": judge_pixel(confusion, pixel, metric=pixel_metric, rules=rules)}

    area_report: dict[str, Any] = {"min_area": 0, "candidates": [], "reason": "no candidates"}
    candidates = sorted(set(min_area_candidates or []) - {0})
    if candidates and verdicts["pixel"].use_tuned:
        stats, areas = RegionStats(), AreaConfusion([0, *candidates], confusion.num_classes)
        no_area = Thresholds(image=image.threshold, pixel=pixel.threshold, min_area=0)
        for _, mask, _, _, raw in iterate(dataset, predictor, batch_size=batch_size, num_workers=num_workers,
                                          desc="thresholds: pass 2 (min area)"):
            predicted = decide(raw, labels, no_area).mask
            stats.update(predicted > 0, mask > 0)
            areas.update(predicted, _seg_truth(mask, seg_mode))
        within = min_areas_within_tolerance(areas, verdicts["pixel"].checks["miou"]["fixed"], rules)
        area_report = {**select_min_area(stats, [0, *candidates], metric=pixel_metric, allowed=within["allowed"]),
                       "miou_check": within}
        if not within["allowed"]:  # the exact masks disagree with the binned check at the bin edge
            verdicts["pixel"] = Verdict("pixel", False, "miou_drop", within["message"], verdicts["pixel"].checks)
    elif candidates:
        area_report["reason"] = "the pixel threshold keeps its fixed value"
    thresholds, status = checked_thresholds(image, pixel, classes, int(area_report["min_area"]), verdicts,
                                             base=f"tuned on {len(targets)} '{dataset.split}' images "
                                                  f"(image: {criterion}, pixel: max {pixel_metric})")
    warnings_ = [w for w in (image.warning, pixel.warning) if w and not (w.startswith("no defect-free"))]
    for verdict in verdicts.values():
        if not verdict.use_tuned and verdict.reason != "cannot_tune":  # the fallback warned already
            message = f"{verdict.part} threshold kept at its fixed value: {verdict.message}"
            logger.warning("thresholds: %s", message)
            warnings_.append(message)
    report = {
        "thresholds": thresholds.to_dict(), "status": status, "split": dataset.split, "samples": len(targets),
        "checks": {part: verdict.to_dict() for part, verdict in verdicts.items()}, "image": image.to_dict(),
        "pixel": pixel.to_dict(), "per_class": class_report, "min_area": area_report, "warnings": warnings_,
    }
    return TuningResult(thresholds, report)


def _not_used(verdict: dict[str, Any] | None) -> str:
    return f" (not used: {verdict['reason']})" if verdict and not verdict["use_tuned"] else ""


def plot_threshold_curves(report: dict[str, Any]) -> Figure:
    """Image-level PR and ROC curves with the chosen point, and pixel metric against threshold."""
    figure = Figure(figsize=(15, 4.2))
    pr_ax, roc_ax, pix_ax = figure.subplots(1, 3)
    image, checks = report["image"], report.get("checks", {})
    curve = image.get("curve") or {}
    if curve:
        pr_ax.plot(curve["recall"], curve["precision"])
        roc_ax.plot(curve["false_alarm_rate"], curve["true_positive_rate"])
        if image.get("recall") is not None:
            label = f"t = {image['threshold']:.3f}" + _not_used(checks.get("image"))
            pr_ax.scatter([image["recall"]], [image["precision"]], color="red", zorder=3, label=label)
            roc_ax.scatter([image["false_alarm_rate"]], [image["recall"]], color="red", zorder=3, label=label)
            pr_ax.legend()
            roc_ax.legend()
    else:
        for ax in (pr_ax, roc_ax):
            ax.text(0.5, 0.5, image.get("warning") or "no curve", ha="center", va="center", wrap=True, fontsize=8)
    pr_ax.set(title="image: precision-recall (defect vs good)", xlabel="recall", ylabel="precision",
              xlim=(0, 1.02), ylim=(0, 1.02))
    roc_ax.set(title="image: ROC", xlabel="false-alarm rate", ylabel="recall", xlim=(0, 1.02), ylim=(0, 1.02))
    pixel = report["pixel"]
    metric = pixel["criterion"].removeprefix("max_")
    if pixel.get("curve"):
        pix_ax.plot(pixel["curve"]["threshold"], pixel["curve"][metric])
        pix_ax.axvline(pixel["threshold"], color="red", linestyle="--",
                       label=f"t = {pixel['threshold']:.3f}" + _not_used(checks.get("pixel")))
        pix_ax.legend()
    pix_ax.set(title=f"pixel: {metric} vs threshold", xlabel="threshold", ylabel=metric, xlim=(0, 1))
    figure.tight_layout()
    return figure


# ----------------------------------------------------------------------------------- evaluation


@dataclass
class _Worst:
    badness: float
    index: int
    prediction: Any = field(compare=False)


@dataclass
class EvaluationResult:
    summary: dict[str, Any]
    confusion: dict[str, np.ndarray]  # operating point (fixed, thresholded) → image-class counts (true x predicted)
    curves: dict[str, Any]
    worst: list[dict[str, Any]]
    pixel_confusion: dict[str, np.ndarray] = field(default_factory=dict)  # the same for pixels (seg classes)


def _image_dice(predicted: np.ndarray, truth: np.ndarray) -> float:
    p, t = predicted > 0, truth > 0
    den = int(p.sum() + t.sum())
    return 1.0 if den == 0 else 2.0 * int((p & t).sum()) / den


def _threshold_free(class_probs: np.ndarray, targets: np.ndarray, labels: LabelSpace) -> tuple[dict, dict]:
    """Image-level AUROC / AP (defect vs good, or macro one-vs-rest without a good class) and curves."""
    probs = torch.from_numpy(class_probs).float()
    tgt = torch.from_numpy(targets).long()
    if labels.has_good:
        score, positive = 1.0 - probs[:, 0], (tgt > 0).long()
        kind = "defect vs good (score 1 - p(good))"
        if positive.min() == positive.max():
            return {"image_auroc": None, "image_ap": None, "image_auroc_kind": kind,
                    "note": "the split has only one of defect/good images: AUROC and AP are undefined"}, {}
        precision, recall, _ = binary_precision_recall_curve(score, positive)
        fpr, tpr, _ = binary_roc(score, positive)
        curves = {"defect": {"precision": precision.tolist(), "recall": recall.tolist(),
                             "fpr": fpr.tolist(), "tpr": tpr.tolist()}}
        return {"image_auroc": float(binary_auroc(score, positive)),
                "image_ap": float(binary_average_precision(score, positive)), "image_auroc_kind": kind}, curves
    classes = len(labels.image_classes)
    curves = {}
    for i, name in enumerate(labels.image_classes):
        positive = (tgt == i).long()
        if positive.min() != positive.max():
            precision, recall, _ = binary_precision_recall_curve(probs[:, i], positive)
            fpr, tpr, _ = binary_roc(probs[:, i], positive)
            curves[name] = {"precision": precision.tolist(), "recall": recall.tolist(), "fpr": fpr.tolist(),
                            "tpr": tpr.tolist()}
    return {"image_auroc": float(multiclass_auroc(probs, tgt, num_classes=classes, average="macro")),
            "image_ap": float(multiclass_average_precision(probs, tgt, num_classes=classes, average="macro")),
            "image_auroc_kind": "macro one-vs-rest over the classes (no defect-free class)"}, curves


def evaluate_split(dataset: ManifestDataset, predictor: Predictor, *, tuned: Thresholds,
                   fixed: Thresholds | None = None, worst_k: int = 8, batch_size: int = 16,
                   num_workers: int = 0) -> EvaluationResult:
    """Metrics at fixed (0.5) and tuned thresholds in one pass, threshold-free AUROC/AP, the k worst images."""
    labels = predictor.labels
    fixed = fixed or Thresholds()
    seg_mode = predictor.seg_mode
    metrics = {"fixed": MultitaskMetrics(labels, seg_mode), "thresholded": MultitaskMetrics(labels, seg_mode)}
    class_rows, targets, worst_heap = [], [], []
    for _, mask, target, index, raw in iterate(dataset, predictor, batch_size=batch_size, num_workers=num_workers,
                                               desc="evaluate"):
        truth = torch.from_numpy(mask.astype(np.int64))
        target_tensor = torch.tensor([target])
        predictions = {name: decide(raw, labels, thresholds)
                       for name, thresholds in (("fixed", fixed), ("thresholded", tuned))}
        for name, prediction in predictions.items():
            metrics[name].update_predictions(torch.from_numpy(prediction.mask.astype(np.int64))[None], torch.tensor(
                [labels.image_index(prediction.label)]), truth[None], target_tensor)
        # the tuned prediction of this image decides how bad it is
        prediction = predictions["thresholded"]
        badness = (1.0 - _image_dice(prediction.mask, mask)) + float(labels.image_index(prediction.label) != target)
        item = _Worst(badness, index, prediction)
        if worst_k > 0:
            if len(worst_heap) < worst_k:
                heapq.heappush(worst_heap, (badness, -index, item))
            elif badness > worst_heap[0][0]:
                heapq.heapreplace(worst_heap, (badness, -index, item))
        class_rows.append(raw.class_probs)
        targets.append(target)
    if not targets:
        raise ValueError("the evaluation split has no accepted sample")
    threshold_free, curves = _threshold_free(np.stack(class_rows), np.asarray(targets), labels)
    results = {name: {**m.compute(), **{k: v for k, v in threshold_free.items() if k.startswith("image_")}}
               for name, m in metrics.items()}
    difference = {k: results["thresholded"][k] - results["fixed"][k] for k in results["fixed"]
                  if isinstance(results["fixed"][k], float) and isinstance(results["thresholded"][k], float)}
    worst = []
    for badness, _, item in sorted(worst_heap, key=lambda entry: (-entry[0], -entry[1])):
        worst.append({"index": item.index, "sample_id": dataset.sample_ids[item.index],
                      "image_path": dataset.image_paths[item.index],
                      "label": labels.image_classes[dataset.targets[item.index]],
                      "predicted": item.prediction.label, "badness": round(badness, 4),
                      "mask": item.prediction.mask})
    summary = {
        "split": dataset.split, "samples": len(targets),
        "thresholds_fixed": fixed.to_dict(), "thresholds_tuned": tuned.to_dict(),
        "final_metrics_fixed": results["fixed"], "final_metrics_thresholded": results["thresholded"],
        "difference_thresholded_minus_fixed": difference,
        "notes": [threshold_free["note"]] if "note" in threshold_free else [],
        "worst": [{k: v for k, v in w.items() if k != "mask"} for w in worst],
    }
    matrices = {name: m.confusion_matrices() for name, m in metrics.items()}
    confusion = {name: cm["cls"].numpy() for name, cm in matrices.items()}
    pixel_confusion = {name: cm["seg"].numpy() for name, cm in matrices.items()}
    summary["confusion_matrices"] = {
        "rows": "true class", "columns": "predicted class",
        "image": {"classes": list(labels.image_classes), **{k: v.tolist() for k, v in confusion.items()}},
        "pixel": {"classes": list(metrics["fixed"].seg_classes), **{k: v.tolist() for k, v in pixel_confusion.items()}},
    }
    return EvaluationResult(summary, confusion, curves, worst, pixel_confusion)
