"""Classification, segmentation (CE + defect Dice) and multitask losses, with the Dice edge cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from segmentation_models_pytorch.losses import DiceLoss

from defect_pipeline.ml.losses import ClassificationLoss, LossOutput, MultitaskLoss, SegmentationLoss

NUM_SEG = 3  # background + 2 defect classes
MARGIN = 10.0


def _masks(defects: bool = True) -> torch.Tensor:
    """Two 8x8 masks; with defects: image 0 has a 3x3 class-1 blob, image 1 a 2x4 class-2 blob."""
    mask = torch.zeros(2, 8, 8, dtype=torch.long)
    if defects:
        mask[0, 1:4, 2:5] = 1
        mask[1, 5:7, 0:4] = 2
    return mask


def _logits_for(mask: torch.Tensor, num_classes: int = NUM_SEG, margin: float = MARGIN) -> torch.Tensor:
    """Confident logits predicting exactly ``mask``."""
    return margin * F.one_hot(mask, num_classes).permute(0, 3, 1, 2).float()


def _binary_logits_for(mask: torch.Tensor, margin: float = MARGIN) -> torch.Tensor:
    return (margin * (2 * (mask > 0).float() - 1)).unsqueeze(1)


def _finite_grad(loss_fn, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    logits = logits.clone().requires_grad_(True)
    loss = loss_fn(logits, mask)
    loss.backward()
    assert torch.isfinite(loss), loss
    assert torch.isfinite(logits.grad).all()
    return loss.detach()


@pytest.mark.parametrize("mode", ["multiclass", "binary"])
def test_all_background_is_not_rewarded_on_defect_batch(mode):
    loss_fn = SegmentationLoss(mode)
    mask = _masks(defects=True)
    make = _logits_for if mode == "multiclass" else _binary_logits_for
    correct, all_bg = make(mask), make(torch.zeros_like(mask))
    assert loss_fn(all_bg, mask) > loss_fn(correct, mask) + 0.5
    assert loss_fn.dice(all_bg, mask) > 0.99  # both defect classes present and missed: Dice loss 1
    assert loss_fn.dice(correct, mask) < 1e-3


def test_missing_one_present_class_costs_its_share():
    loss_fn = SegmentationLoss("multiclass")
    mask = _masks(defects=True)
    pred = mask.clone()
    pred[pred == 2] = 0  # class 2 missed entirely, class 1 right
    assert loss_fn.dice(_logits_for(pred), mask) == pytest.approx(0.5, abs=1e-3)


@pytest.mark.parametrize("mode", ["multiclass", "binary"])
def test_defect_free_batch_all_background_is_small_and_finite(mode):
    loss_fn = SegmentationLoss(mode)
    mask = _masks(defects=False)
    make = _logits_for if mode == "multiclass" else _binary_logits_for
    loss = _finite_grad(loss_fn, make(mask), mask)
    assert 0.0 <= loss < 1e-3
    # ... but false positives on a defect-free batch are not free in the Dice term
    fp_pred = mask.clone()
    fp_pred[:, :4] = 1
    assert loss_fn.dice(make(fp_pred), mask) > 0.2
    assert loss_fn.dice(make(fp_pred), mask) > 100 * loss_fn.dice(make(mask), mask)


def test_absent_class_false_positives_are_penalised():
    loss_fn = SegmentationLoss("multiclass", ce_weight=0.0)
    mask = torch.zeros(2, 8, 8, dtype=torch.long)
    mask[0, 1:4, 2:5] = 1  # only class 1 present; class 2 absent
    good = _logits_for(mask)
    fp = mask.clone()
    fp[1, :, :] = 2  # hallucinate class 2 on the whole second image
    assert loss_fn(_logits_for(fp), mask) > loss_fn(good, mask) + 0.2


@pytest.mark.parametrize("mode", ["multiclass", "binary"])
@pytest.mark.parametrize("defects", [True, False])
@pytest.mark.parametrize("kind", ["zeros", "huge", "random"])
def test_no_nan_anywhere(mode, defects, kind):
    torch.manual_seed(0)
    mask = _masks(defects)
    channels = NUM_SEG if mode == "multiclass" else 1
    if kind == "zeros":
        logits = torch.zeros(2, channels, 8, 8)
    elif kind == "huge":
        logits = 1e4 * torch.randn(2, channels, 8, 8)
    else:
        logits = torch.randn(2, channels, 8, 8)
    _finite_grad(SegmentationLoss(mode), logits, mask)


@pytest.mark.parametrize("mode", ["multiclass", "binary"])
def test_ignore_index(mode):
    loss_fn = SegmentationLoss(mode, ignore_index=255)
    mask = _masks(defects=True)
    mask[:, 0, :] = 255
    channels = NUM_SEG if mode == "multiclass" else 1
    torch.manual_seed(0)
    logits = torch.randn(2, channels, 8, 8)
    changed = logits.clone()
    changed[:, :, 0, :] = 50 * torch.randn(2, channels, 8)  # only ignored pixels differ
    assert loss_fn(logits, mask) == pytest.approx(float(loss_fn(changed, mask)), rel=1e-5)
    # every pixel ignored: 0, not NaN
    _finite_grad(loss_fn, logits, torch.full_like(mask, 255))


def test_dice_matches_smp_when_every_defect_class_is_present():
    torch.manual_seed(0)
    mask = _masks(defects=True)
    logits = torch.randn(2, NUM_SEG, 8, 8)
    ours = SegmentationLoss("multiclass").dice(logits, mask)
    smp = DiceLoss("multiclass", classes=[1, 2], from_logits=True)(logits, mask)
    assert ours == pytest.approx(float(smp), abs=1e-5)


def test_ce_matches_torch():
    torch.manual_seed(0)
    mask = _masks(defects=True)
    logits = torch.randn(2, NUM_SEG, 8, 8)
    assert SegmentationLoss("multiclass").ce(logits, mask) == pytest.approx(float(F.cross_entropy(logits, mask)))
    blogits = torch.randn(2, 1, 8, 8)
    expected = F.binary_cross_entropy_with_logits(blogits[:, 0], (mask > 0).float())
    assert SegmentationLoss("binary").ce(blogits, mask) == pytest.approx(float(expected))
    total = SegmentationLoss("multiclass", ce_weight=0.3, dice_weight=2.0)(logits, mask)
    loss_fn = SegmentationLoss("multiclass")
    assert total == pytest.approx(0.3 * float(loss_fn.ce(logits, mask)) + 2.0 * float(loss_fn.dice(logits, mask)))


def test_classification_loss():
    torch.manual_seed(0)
    logits, label = torch.randn(5, 3), torch.tensor([0, 1, 2, 2, 0])
    weights = [1.0, 2.0, 0.5]
    loss = ClassificationLoss(3, weights, 0.1)(logits, label)
    expected = F.cross_entropy(logits, label, weight=torch.tensor(weights), label_smoothing=0.1)
    assert loss == pytest.approx(float(expected))
    assert ClassificationLoss(3)(logits, label) == pytest.approx(float(F.cross_entropy(logits, label)))
    with pytest.raises(ValueError):
        ClassificationLoss(3, [1.0, 2.0])


def _batch():
    torch.manual_seed(0)
    mask = _masks(defects=True)
    seg_logits = torch.randn(2, NUM_SEG, 8, 8)
    cls_logits, label = torch.randn(2, 3), torch.tensor([1, 2])
    return seg_logits, cls_logits, mask, label


def _multitask(**kw) -> MultitaskLoss:
    return MultitaskLoss(ClassificationLoss(3), SegmentationLoss("multiclass"), **kw)


def test_fixed_weighting():
    seg_logits, cls_logits, mask, label = _batch()
    out = _multitask(weighting="fixed", alpha=0.7, beta=2.0)(seg_logits, cls_logits, mask, label)
    assert isinstance(out, LossOutput)
    assert float(out.total.detach()) == pytest.approx(0.7 * float(out.cls) + 2.0 * float(out.seg))
    assert out.weights == {"alpha": 0.7, "beta": 2.0}
    assert not out.cls.requires_grad and not out.seg.requires_grad
    assert list(_multitask().parameters()) == []


def test_dynamic_weighting():
    batch = _batch()
    loss = _multitask(weighting="dynamic", alpha_start=1.0, alpha_end=0.2, beta_start=0.5, beta_end=1.5)
    start = loss(*batch, step=0, total_steps=100)
    mid = loss(*batch, step=50, total_steps=100)
    end = loss(*batch, step=100, total_steps=100)
    assert start.weights == pytest.approx({"alpha": 1.0, "beta": 0.5})
    assert mid.weights == pytest.approx({"alpha": 0.6, "beta": 1.0})
    assert end.weights == pytest.approx({"alpha": 0.2, "beta": 1.5})
    assert float(end.total.detach()) == pytest.approx(0.2 * float(end.cls) + 1.5 * float(end.seg))
    with pytest.raises(ValueError):
        loss(*batch)


def test_uncertainty_weights_are_learned_and_favour_the_easier_task():
    mask = _masks(defects=True)
    seg_logits = _logits_for(mask, margin=3.0)  # nearly right: small segmentation loss
    cls_logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0]])
    label = torch.tensor([1, 2])  # confidently wrong: large classification loss
    loss = _multitask(weighting="uncertainty")
    params = dict(loss.named_parameters())
    assert set(params) == {"log_var_cls", "log_var_seg"}
    first = loss(seg_logits, cls_logits, mask, label)
    assert first.weights == pytest.approx({"alpha": 1.0, "beta": 1.0, "log_var_cls": 0.0, "log_var_seg": 0.0})
    assert float(first.total.detach()) == pytest.approx(float(first.cls + first.seg))
    l_cls, l_seg = float(first.cls), float(first.seg)
    assert l_cls > l_seg

    opt = torch.optim.SGD(loss.parameters(), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        loss(seg_logits, cls_logits, mask, label).total.backward()
        opt.step()
    w = loss(seg_logits, cls_logits, mask, label).weights
    assert w["alpha"] < 1.0 < w["beta"]  # larger loss -> smaller weight
    assert w["log_var_cls"] > 0 > w["log_var_seg"]

    for _ in range(60):
        opt.zero_grad()
        loss(seg_logits, cls_logits, mask, label).total.backward()
        opt.step()
    w = loss(seg_logits, cls_logits, mask, label).weights
    # optimum of exp(-s) L + s: s = log L, weight 1 / L
    assert w["log_var_cls"] == pytest.approx(math.log(l_cls), abs=0.05)
    assert w["log_var_seg"] == pytest.approx(math.log(l_seg), abs=0.05)
    assert w["alpha"] == pytest.approx(math.exp(-w["log_var_cls"]))


def test_uncertainty_gradients_reach_the_model_too():
    seg_logits, cls_logits, mask, label = _batch()
    seg_logits.requires_grad_(True)
    cls_logits.requires_grad_(True)
    out = _multitask(weighting="uncertainty", init_log_var_cls=1.0)(seg_logits, cls_logits, mask, label)
    out.total.backward()
    assert torch.isfinite(seg_logits.grad).all() and seg_logits.grad.abs().sum() > 0
    assert torch.isfinite(cls_logits.grad).all() and cls_logits.grad.abs().sum() > 0
    assert out.weights["alpha"] == pytest.approx(math.exp(-1.0))
