"""Epoch metrics of the multitask model, accumulated batch by batch in confusion matrices.

:class:`MultitaskMetrics` keeps two :class:`torchmetrics.classification.MulticlassConfusionMatrix`
states on the CPU, one over the image classes and one over the segmentation classes (pixels), so
memory does not grow with the dataset. Predictions are reduced to class indices on the device they
arrive on (argmax / threshold) and only the indices travel to the CPU. Every metric is derived
from the two matrices in :meth:`MultitaskMetrics.compute` (rows = target, columns = prediction):

Classification (image classes, ``LabelSpace.image_classes``)
    * ``accuracy``: correct images / images.
    * ``f1/<class>``: ``2 TP / (2 TP + FP + FN)`` per image class.
    * ``macro_f1``: mean of the per-class F1 over the classes that occur in the target or the
      predictions (``TP + FP + FN > 0``), the ``average="macro"`` rule of torchmetrics.

Segmentation (pixels)
    * ``iou/<class>``: per-class IoU ``TP / (TP + FP + FN)`` over the whole epoch (not averaged per
      image), for every segmentation class including ``background``. In ``"binary"`` seg mode the
      classes are ``background`` and ``defect``.
    * ``miou``: mean IoU over the classes, background included; ``miou_defects``: the same without
      background. Like mmseg, classes never present in target nor prediction (union 0) have an
      undefined IoU and are left out of the mean (nanmean).
    * ``iou`` and ``dice``: defect vs background as one binary problem (any defect class counts as
      "defect"; a defect pixel predicted as another defect class is a hit here).

``combined_score = (macro_f1 + miou_defects) / 2``: the default monitor (higher is better),
balancing image classification and defect segmentation, background excluded so that predicting
"no defect anywhere" cannot score well.

No NaN in the output: per-class values of classes that never occur (target and prediction both
empty, union 0) are reported as ``absent_value`` (0.0 by default, the ``zero_division``
convention of torchmetrics; pass ``float("nan")`` for the mmseg convention) and are excluded from
``macro_f1``, ``miou`` and ``miou_defects``. An aggregate with nothing to average (for example
``miou_defects`` or ``iou`` on a set with no defect pixel in target nor prediction, or any metric
before the first update) is 0.0. The keys are always the same, whatever the data.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix

from defect_pipeline.ml.labels import LabelSpace

__all__ = ["MultitaskMetrics", "iou_from_confusion", "f1_from_confusion"]


def iou_from_confusion(confmat: Tensor) -> Tensor:
    """Per-class IoU ``TP / (TP + FP + FN)`` of a (target x prediction) confusion matrix; NaN where the union is 0."""
    cm = confmat.double()
    tp = cm.diagonal()
    union = cm.sum(0) + cm.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, math.nan))


def f1_from_confusion(confmat: Tensor) -> Tensor:
    """Per-class F1 ``2 TP / (2 TP + FP + FN)`` of a (target x prediction) confusion matrix; NaN where undefined."""
    cm = confmat.double()
    tp = cm.diagonal()
    denom = cm.sum(0) + cm.sum(1)  # (TP + FP) + (TP + FN)
    return torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.full_like(tp, math.nan))


def _nanmean(values: Tensor) -> float:
    """Mean of the non-NaN values, 0.0 when there is none."""
    present = values[~values.isnan()]
    return float(present.mean()) if present.numel() else 0.0


def _safe_ratio(num: Tensor, den: Tensor) -> float:
    return float(num) / float(den) if float(den) > 0 else 0.0


class MultitaskMetrics:
    """Classification + segmentation metrics accumulated over an epoch (see the module docstring).

    Args:
        labels: the label space (image classes, segmentation classes).
        seg_mode: ``"multiclass"`` (seg logits N x C x H x W, C = ``labels.num_seg_classes``) or
            ``"binary"`` (seg logits N x 1 x H x W, prediction ``logit > 0``, target ``mask > 0``).
        ignore_index: mask value of pixels to leave out, or None.
        absent_value: value reported for per-class metrics of classes that never occur.

    Usage: ``update(...)`` per batch, ``compute()`` at the end of the epoch, ``reset()`` before the
    next one.
    """

    def __init__(self, labels: LabelSpace, seg_mode: Literal["multiclass", "binary"] = "multiclass", *,
                 ignore_index: int | None = None, absent_value: float = 0.0) -> None:
        if seg_mode not in ("multiclass", "binary"):
            raise ValueError(f"seg_mode must be 'multiclass' or 'binary', got {seg_mode!r}")
        self.labels = labels
        self.seg_mode = seg_mode
        self.ignore_index = ignore_index
        self.absent_value = float(absent_value)
        self.image_classes = labels.image_classes
        self.seg_classes = labels.seg_classes if seg_mode == "multiclass" else ("background", "defect")
        # torchmetrics needs >= 2 classes; a single image class gets a dummy second row/column.
        self._num_cls = max(len(self.image_classes), 2)
        self._cls_cm = MulticlassConfusionMatrix(num_classes=self._num_cls)
        self._seg_cm = MulticlassConfusionMatrix(num_classes=len(self.seg_classes), ignore_index=ignore_index)

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self._cls_cm.reset()
        self._seg_cm.reset()

    @torch.no_grad()
    def update(self, seg_logits: Tensor, cls_logits: Tensor, mask: Tensor, label: Tensor) -> None:
        """Add one batch.

        Args:
            seg_logits: (N, C, H, W) logits, or (N, 1, H, W) / (N, H, W) in binary mode.
            cls_logits: (N, num_image_classes) logits.
            mask: (N, H, W) target class indices (background 0), possibly ``ignore_index``.
            label: (N,) target image-class indices.
        """
        seg_logits = seg_logits.detach()
        if self.seg_mode == "binary":
            if seg_logits.ndim == 4:
                seg_logits = seg_logits[:, 0]
            seg_pred = (seg_logits > 0).long()
        else:
            seg_pred = seg_logits.argmax(dim=1)
        self.update_predictions(seg_pred, cls_logits.detach().argmax(dim=1), mask, label)

    @torch.no_grad()
    def update_predictions(self, seg_pred: Tensor, cls_pred: Tensor, mask: Tensor, label: Tensor) -> None:
        """Add one batch of decisions already made (e.g. at tuned thresholds).

        Args:
            seg_pred: (N, H, W) predicted class indices (binary mode: 0/1).
            cls_pred: (N,) predicted image-class indices.
            mask: (N, H, W) target class indices (background 0), possibly ``ignore_index``.
            label: (N,) target image-class indices.
        """
        self._cls_cm.update(cls_pred.detach().long().cpu(), label.detach().long().cpu())
        mask = mask.detach().long()
        target = mask
        if self.seg_mode == "binary":
            target = (mask > 0).long()
            if self.ignore_index is not None:
                target = torch.where(mask == self.ignore_index, mask, target)
        self._seg_cm.update(seg_pred.detach().long().cpu(), target.cpu())

    def confusion_matrices(self) -> dict[str, Tensor]:
        """The accumulated confusion matrices (rows = target, columns = prediction): ``cls`` and ``seg``."""
        n = len(self.image_classes)
        return {"cls": self._cls_cm.confmat[:n, :n].clone(), "seg": self._seg_cm.confmat.clone()}

    def _per_class(self, values: Tensor) -> list[float]:
        return [self.absent_value if math.isnan(v) else v for v in values.tolist()]

    def compute(self, reduce: Callable[[Tensor], Tensor] | None = None) -> dict[str, float]:
        """All metrics as floats: ``accuracy``, ``macro_f1``, ``f1/<image class>``, ``iou``, ``dice``,
        ``iou/<seg class>``, ``miou``, ``miou_defects``, ``combined_score``.

        ``reduce``: applied to both confusion matrices first — with several training processes,
        the sum over the ranks, so the metrics are those of all ranks' samples together.
        """
        cls_full, seg_cm = self._cls_cm.confmat, self._seg_cm.confmat
        if reduce is not None:
            cls_full, seg_cm = reduce(cls_full), reduce(seg_cm)
        n = len(self.image_classes)
        cls_cm = cls_full[:n, :n]
        out: dict[str, float] = {}

        out["accuracy"] = _safe_ratio(cls_cm.diagonal().sum(), cls_full.sum())
        f1 = f1_from_confusion(cls_cm)
        out["macro_f1"] = _nanmean(f1)
        for name, value in zip(self.image_classes, self._per_class(f1)):
            out[f"f1/{name}"] = value

        tp = seg_cm[1:, 1:].sum()
        fp = seg_cm[0, 1:].sum()
        fn = seg_cm[1:, 0].sum()
        out["iou"] = _safe_ratio(tp, tp + fp + fn)
        out["dice"] = _safe_ratio(2 * tp, 2 * tp + fp + fn)

        iou = iou_from_confusion(seg_cm)
        for name, value in zip(self.seg_classes, self._per_class(iou)):
            out[f"iou/{name}"] = value
        out["miou"] = _nanmean(iou)
        out["miou_defects"] = _nanmean(iou[1:])
        out["combined_score"] = 0.5 * (out["macro_f1"] + out["miou_defects"])
        return out
