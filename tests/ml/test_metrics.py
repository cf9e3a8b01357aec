"""Epoch metrics on hand-made tensors with known values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multiclass_f1_score, multiclass_jaccard_index

from defect_pipeline.ml.labels import LabelSpace
from defect_pipeline.ml.metrics import MultitaskMetrics

LABELS = LabelSpace(("crack", "scratch"))  # image: good, crack, scratch; seg: background, crack, scratch


def _onehot_logits(index: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Logits whose argmax is ``index`` (class dim 1)."""
    onehot = F.one_hot(index, num_classes).float()
    return onehot.movedim(-1, 1) if index.ndim > 1 else onehot


def _seg_batch():
    mask = torch.zeros(2, 4, 4, dtype=torch.long)
    mask[0, :2, :2] = 1
    mask[1, 2:, 2:] = 2
    label = torch.tensor([1, 2])
    return mask, label


def test_keys():
    keys = set(MultitaskMetrics(LABELS, "multiclass").compute())
    assert keys == {"accuracy", "macro_f1", "f1/good", "f1/crack", "f1/scratch", "iou", "dice",
                    "iou/background", "iou/crack", "iou/scratch", "miou", "miou_defects", "combined_score"}


def test_empty_compute_is_all_zero_not_nan():
    out = MultitaskMetrics(LABELS, "multiclass").compute()
    assert all(v == 0.0 for v in out.values())


def test_perfect_prediction_gives_ones():
    metrics = MultitaskMetrics(LABELS, "multiclass")
    mask, label = _seg_batch()
    metrics.update(_onehot_logits(mask, 3), _onehot_logits(label, 3), mask, label)
    # a defect-free image, so every image class occurs
    good_mask = torch.zeros(1, 4, 4, dtype=torch.long)
    metrics.update(_onehot_logits(good_mask, 3), _onehot_logits(torch.tensor([0]), 3), good_mask, torch.tensor([0]))
    out = metrics.compute()
    assert out == pytest.approx({k: 1.0 for k in out})


def test_known_classification_confusion():
    metrics = MultitaskMetrics(LABELS, "multiclass")
    label = torch.tensor([0, 0, 1, 2])
    pred = torch.tensor([0, 1, 1, 2])
    mask = torch.zeros(4, 2, 2, dtype=torch.long)
    metrics.update(_onehot_logits(mask, 3), _onehot_logits(pred, 3), mask, label)
    out = metrics.compute()
    assert out["accuracy"] == pytest.approx(0.75)
    assert out["f1/good"] == pytest.approx(2 / 3)
    assert out["f1/crack"] == pytest.approx(2 / 3)
    assert out["f1/scratch"] == pytest.approx(1.0)
    assert out["macro_f1"] == pytest.approx(7 / 9)
    assert out["macro_f1"] == pytest.approx(float(multiclass_f1_score(pred, label, 3, average="macro")))
    assert metrics.confusion_matrices()["cls"].tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]


def test_known_segmentation_confusion():
    metrics = MultitaskMetrics(LABELS, "multiclass")
    target = torch.tensor([[[0, 0, 1, 1],
                            [0, 0, 1, 1],
                            [0, 2, 2, 0],
                            [0, 0, 0, 0]]])
    pred = torch.tensor([[[0, 1, 1, 1],
                          [0, 0, 1, 0],
                          [0, 2, 1, 0],
                          [0, 0, 0, 0]]])
    metrics.update(_onehot_logits(pred, 3), _onehot_logits(torch.tensor([1]), 3), target, torch.tensor([1]))
    out = metrics.compute()
    # background: TP 9, FP 1 (target crack -> bg), FN 1 (bg -> crack): 9 / 11
    # crack: TP 3, FP 2 (bg, scratch -> crack), FN 1: 3 / 6; scratch: TP 1, FN 1: 1 / 2
    assert out["iou/background"] == pytest.approx(9 / 11)
    assert out["iou/crack"] == pytest.approx(0.5)
    assert out["iou/scratch"] == pytest.approx(0.5)
    assert out["miou"] == pytest.approx((9 / 11 + 0.5 + 0.5) / 3)
    assert out["miou_defects"] == pytest.approx(0.5)
    reference = multiclass_jaccard_index(pred, target, 3, average="none")
    assert [out["iou/background"], out["iou/crack"], out["iou/scratch"]] == pytest.approx(reference.tolist())
    # binary defect vs background: TP 5 (scratch->crack counts), FP 1, FN 1
    assert out["iou"] == pytest.approx(5 / 7)
    assert out["dice"] == pytest.approx(10 / 12)
    assert out["combined_score"] == pytest.approx((1.0 + 0.5) / 2)


def test_absent_class_is_not_nan_and_left_out_of_means():
    labels = LabelSpace(("crack", "scratch", "dent"))
    mask, label = _seg_batch()  # no dent anywhere, no good image
    metrics = MultitaskMetrics(labels, "multiclass")
    metrics.update(_onehot_logits(mask, 4), _onehot_logits(label, 4), mask, label)
    out = metrics.compute()
    assert not any(math.isnan(v) for v in out.values())
    assert out["iou/dent"] == 0.0 and out["f1/dent"] == 0.0 and out["f1/good"] == 0.0
    assert out["miou"] == pytest.approx(1.0)  # nanmean over present classes, as mmseg
    assert out["miou_defects"] == pytest.approx(1.0)
    assert out["macro_f1"] == pytest.approx(1.0)
    assert out["combined_score"] == pytest.approx(1.0)

    marked = MultitaskMetrics(labels, "multiclass", absent_value=float("nan"))
    marked.update(_onehot_logits(mask, 4), _onehot_logits(label, 4), mask, label)
    out = marked.compute()
    assert math.isnan(out["iou/dent"]) and math.isnan(out["f1/good"])
    assert out["combined_score"] == pytest.approx(1.0)


def test_defect_free_data_gives_finite_scores():
    metrics = MultitaskMetrics(LABELS, "multiclass")
    mask = torch.zeros(3, 4, 4, dtype=torch.long)
    label = torch.zeros(3, dtype=torch.long)
    metrics.update(_onehot_logits(mask, 3), _onehot_logits(label, 3), mask, label)
    out = metrics.compute()
    assert not any(math.isnan(v) for v in out.values())
    assert out["iou/background"] == 1.0 and out["miou"] == 1.0
    assert out["iou"] == 0.0 and out["dice"] == 0.0 and out["miou_defects"] == 0.0
    assert out["combined_score"] == pytest.approx(0.5)


def test_accumulates_over_batches_and_resets():
    mask, label = _seg_batch()
    torch.manual_seed(0)
    seg_logits, cls_logits = torch.randn(2, 3, 4, 4), torch.randn(2, 3)
    whole = MultitaskMetrics(LABELS, "multiclass")
    whole.update(seg_logits, cls_logits, mask, label)
    parts = MultitaskMetrics(LABELS, "multiclass")
    for i in range(2):
        parts.update(seg_logits[i:i + 1], cls_logits[i:i + 1], mask[i:i + 1], label[i:i + 1])
    assert parts.compute() == pytest.approx(whole.compute())
    parts.reset()
    assert all(v == 0.0 for v in parts.compute().values())
    assert int(parts.confusion_matrices()["seg"].sum()) == 0


def test_binary_mode():
    metrics = MultitaskMetrics(LABELS, "binary")
    mask, label = _seg_batch()
    seg_logits = torch.where(mask > 0, 5.0, -5.0).unsqueeze(1)
    seg_logits[0, 0, 0, 0] = -5.0  # miss one defect pixel of 8
    metrics.update(seg_logits, _onehot_logits(label, 3), mask, label)
    out = metrics.compute()
    assert {"iou/background", "iou/defect"} <= set(out) and "iou/crack" not in out
    assert out["iou/defect"] == pytest.approx(7 / 8)
    assert out["iou"] == pytest.approx(7 / 8)
    assert out["dice"] == pytest.approx(14 / 15)
    assert out["iou/background"] == pytest.approx(24 / 25)
    assert out["miou_defects"] == pytest.approx(7 / 8)


def test_ignore_index_pixels_do_not_count():
    metrics = MultitaskMetrics(LABELS, "multiclass", ignore_index=255)
    mask, label = _seg_batch()
    pred = mask.clone()
    mask = mask.clone()
    mask[:, 3, :] = 255
    pred[:, 3, :] = 1  # wrong everywhere, but ignored
    mask[1, 3, 2:] = 255
    metrics.update(_onehot_logits(pred, 3), _onehot_logits(label, 3), mask, label)
    out = metrics.compute()
    assert out["miou"] == pytest.approx(1.0)
    assert int(metrics.confusion_matrices()["seg"].sum()) == 2 * 12


def test_label_space_without_good_class():
    labels = LabelSpace(("crack", "scratch"), has_good=False)
    metrics = MultitaskMetrics(labels, "multiclass")
    mask, _ = _seg_batch()
    label = torch.tensor([0, 1])
    metrics.update(_onehot_logits(mask, 3), _onehot_logits(label, 2), mask, label)
    out = metrics.compute()
    assert "f1/good" not in out and out["f1/crack"] == 1.0 and out["accuracy"] == 1.0
