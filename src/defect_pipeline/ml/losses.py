"""Losses of the multitask model: image classification, defect segmentation, and their combination.

Classification
    :class:`ClassificationLoss` is cross-entropy over the image classes (``LabelSpace.image_classes``)
    with optional class weights and label smoothing.

Segmentation
    :class:`SegmentationLoss` is ``ce_weight * CE + dice_weight * Dice``. In ``"multiclass"`` mode the
    logits have one channel per segmentation class (background 0 + defect classes) and CE is the
    softmax cross-entropy; in ``"binary"`` mode the logits have one channel (defect vs background),
    the target is ``mask > 0`` and CE is ``BCEWithLogits``. CE is averaged over the non-ignored
    pixels (0, not NaN, when every pixel is ignored).

    The Dice term is designed for data where many images (often whole batches) have no defect:

    * **Defect classes only.** Background is left out: its Dice is close to 1 for any mostly
      background prediction, so including it rewards predicting "all background".
    * **Over the batch.** Intersections and sums run over every image and pixel of the batch
      (``segmentation_models_pytorch.losses.DiceLoss`` with ``dims=(0, 2)``), not per image, so a
      defect-free image does not produce an undefined 0/0 Dice of its own.
    * **Classes present in the batch target** contribute ``1 - soft Dice`` (from smp's
      ``DiceLoss``). An all-background prediction scores Dice 0, loss 1, for such a class.
    * **Classes absent from the batch target** have no defined Dice (0/0 for a perfect empty
      prediction; exactly 0, i.e. loss 1 with no useful gradient, as soon as any probability mass
      lands on the class). smp sets their loss to 0 whatever the prediction, which makes false
      positives on absent classes free and, averaged over classes, dilutes the loss. Here they
      contribute their *soft false-positive rate* instead: the mean predicted probability of the
      class over the valid pixels. It is 0 only when the class is really predicted absent, grows
      with false positives, and does not saturate like a smoothed Dice would.
    * The per-class terms (each in [0, 1]) are averaged over **all** defect classes, so the scale
      does not depend on which classes a batch happens to contain.

    Consequences (tested): on a batch with defects, an all-background prediction costs more than
    a correct one; on a defect-free batch, a confident all-background prediction costs almost 0
    (finite, no 0/0) and predicting defects costs more; no NaN in the loss or its gradients
    (denominators of present classes are >= the target size, smp clamps them at ``eps``).
    Probabilities are computed in float32, so the loss is safe under autocast.

Multitask
    :class:`MultitaskLoss` combines both with ``weighting``:

    * ``"fixed"``: ``total = alpha * L_cls + beta * L_seg``.
    * ``"dynamic"``: same, with ``alpha`` moving linearly ``alpha_start -> alpha_end`` and ``beta``
      ``beta_start -> beta_end`` over ``total_steps`` (:func:`~defect_pipeline.ml.schedules.dynamic_weight`).
    * ``"uncertainty"`` (Kendall, Gal & Cipolla, CVPR 2018, in the common log-variance form):
      ``total = exp(-s_cls) * L_cls + s_cls + exp(-s_seg) * L_seg + s_seg`` with learned
      ``s = log sigma^2`` (``nn.Parameter``\\ s of the loss module, so they are in
      ``loss.parameters()``). For a fixed task loss ``L`` the optimum is ``s = log L``, i.e. the
      weight ``exp(-s) = 1 / L``: the task with the larger loss gets the smaller weight. The
      ``1/2`` factors of the paper's regression form are dropped (the same form for both tasks;
      it only rescales ``s``). ``total`` can be negative (``s`` is unbounded below), which is
      expected. The engine must give ``loss.parameters()`` to the optimizer, preferably without
      weight decay (decay would pull ``s`` towards 0, i.e. towards weights of 1).

    ``forward`` returns a :class:`LossOutput` whose ``weights`` hold the current ``alpha`` and
    ``beta`` (for ``"uncertainty"``: ``alpha = exp(-s_cls)``, ``beta = exp(-s_seg)``, plus
    ``log_var_cls = s_cls`` and ``log_var_seg = s_seg``) as floats, ready to be logged.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.losses import DiceLoss
from torch import Tensor, nn

from defect_pipeline.ml.schedules import dynamic_weight

SegMode = Literal["multiclass", "binary"]
Weighting = Literal["fixed", "dynamic", "uncertainty"]

__all__ = ["ClassificationLoss", "LossOutput", "MultitaskLoss", "SegmentationLoss"]


class ClassificationLoss(nn.Module):
    """Cross-entropy over the image classes, with optional class weights and label smoothing.

    Args:
        num_classes: number of image classes (``LabelSpace.num_image_classes``).
        class_weights: one weight per class (index order of ``LabelSpace.image_classes``), or None.
        label_smoothing: in [0, 1), as in :func:`torch.nn.functional.cross_entropy`.
    """

    def __init__(self, num_classes: int, class_weights: list[float] | None = None,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        if class_weights is not None and len(class_weights) != num_classes:
            raise ValueError(f"class_weights has {len(class_weights)} values, expected {num_classes}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.num_classes = num_classes
        self.label_smoothing = float(label_smoothing)
        weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weight)

    def forward(self, cls_logits: Tensor, label: Tensor) -> Tensor:
        """Mean cross-entropy of ``cls_logits`` (N, C) against integer labels (N,)."""
        return F.cross_entropy(cls_logits.float(), label.long(), weight=self.class_weights,
                               label_smoothing=self.label_smoothing)


class SegmentationLoss(nn.Module):
    """``ce_weight * CE + dice_weight * Dice`` for defect segmentation (see the module docstring).

    Args:
        mode: ``"multiclass"`` (logits N x C x H x W, C = background + defect classes, mask of class
            indices) or ``"binary"`` (logits N x 1 x H x W, target ``mask > 0``).
        ce_weight: weight of the (binary) cross-entropy term.
        dice_weight: weight of the defect Dice term.
        ignore_index: mask value of pixels that count in neither term, or None.
    """

    def __init__(self, mode: SegMode = "multiclass", ce_weight: float = 1.0, dice_weight: float = 1.0,
                 ignore_index: int | None = None) -> None:
        super().__init__()
        if mode not in ("multiclass", "binary"):
            raise ValueError(f"mode must be 'multiclass' or 'binary', got {mode!r}")
        self.mode = mode
        self.ce_weight = float(ce_weight)
        self.dice_weight = float(dice_weight)
        self.ignore_index = ignore_index
        # Per-class soft Dice over the batch on probabilities we prepare ourselves (defect channels
        # only, ignored pixels zeroed): "multilabel" mode with dims (0, 2), absent classes -> 0.
        self._dice = DiceLoss("multilabel", from_logits=False, smooth=0.0)

    def _valid(self, mask: Tensor) -> Tensor:
        if self.ignore_index is None:
            return torch.ones_like(mask, dtype=torch.bool)
        return mask != self.ignore_index

    def _prepare(self, seg_logits: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Float32 logits, defect probabilities and one-hot defect targets (N, D, H, W), valid (N, H, W)."""
        logits = seg_logits.float()
        if self.mode == "binary" and logits.ndim == 3:
            logits = logits.unsqueeze(1)
        if logits.shape[-2:] != mask.shape[-2:] or logits.shape[0] != mask.shape[0]:
            raise ValueError(f"seg_logits {tuple(seg_logits.shape)} and mask {tuple(mask.shape)} do not match")
        valid = self._valid(mask)
        clean = torch.where(valid, mask, torch.zeros_like(mask)).long()
        vf = valid.unsqueeze(1).float()
        if self.mode == "binary":
            if logits.shape[1] != 1:
                raise ValueError(f"binary mode expects 1 logit channel, got {logits.shape[1]}")
            probs = torch.sigmoid(logits) * vf
            target = (clean > 0).unsqueeze(1).float() * vf
        else:
            num_classes = logits.shape[1]
            if num_classes < 2:
                raise ValueError("multiclass mode expects background + at least one defect channel")
            probs = logits.softmax(dim=1)[:, 1:] * vf
            target = F.one_hot(clean, num_classes).permute(0, 3, 1, 2)[:, 1:].float() * vf
        return logits, probs, target, valid

    def ce(self, seg_logits: Tensor, mask: Tensor) -> Tensor:
        """Cross-entropy (multiclass) or BCE-with-logits (binary) averaged over the valid pixels."""
        logits, _, target, valid = self._prepare(seg_logits, mask)
        return self._ce(logits, mask, target, valid)

    def _ce(self, logits: Tensor, mask: Tensor, target: Tensor, valid: Tensor) -> Tensor:
        n_valid = valid.sum().clamp_min(1)
        if self.mode == "binary":
            per_pixel = F.binary_cross_entropy_with_logits(logits[:, 0], target[:, 0], reduction="none")
            return (per_pixel * valid).sum() / n_valid
        ignore = -100 if self.ignore_index is None else self.ignore_index
        return F.cross_entropy(logits, mask.long(), ignore_index=ignore, reduction="sum") / n_valid

    def dice(self, seg_logits: Tensor, mask: Tensor) -> Tensor:
        """Defect Dice loss over the batch, with the false-positive term for absent classes."""
        _, probs, target, valid = self._prepare(seg_logits, mask)
        return self._dice_term(probs, target, valid)

    def _dice_term(self, probs: Tensor, target: Tensor, valid: Tensor) -> Tensor:
        num_defect = probs.shape[1]
        # sum over present classes of (1 - Dice), divided by num_defect (absent classes are 0 here)
        present_term = self._dice(probs, target)
        absent = target.sum(dim=(0, 2, 3)) == 0
        fp_rate = probs.sum(dim=(0, 2, 3)) / valid.sum().clamp_min(1)
        absent_term = (fp_rate * absent).sum() / num_defect
        return present_term + absent_term

    def forward(self, seg_logits: Tensor, mask: Tensor) -> Tensor:
        """``ce_weight * CE + dice_weight * Dice`` (a scalar) of ``seg_logits`` against ``mask`` (N, H, W)."""
        logits, probs, target, valid = self._prepare(seg_logits, mask)
        total = logits.new_zeros(())
        if self.ce_weight:
            total = total + self.ce_weight * self._ce(logits, mask, target, valid)
        if self.dice_weight:
            total = total + self.dice_weight * self._dice_term(probs, target, valid)
        return total


class LossOutput(NamedTuple):
    """Result of :meth:`MultitaskLoss.forward`.

    Attributes:
        total: the weighted loss to back-propagate (scalar, with graph).
        cls: the classification loss (scalar, detached), before weighting.
        seg: the segmentation loss (scalar, detached), before weighting.
        weights: current weights as floats: ``alpha`` and ``beta`` for every weighting, plus
            ``log_var_cls`` and ``log_var_seg`` for ``"uncertainty"``.
    """

    total: Tensor
    cls: Tensor
    seg: Tensor
    weights: dict[str, float]


class MultitaskLoss(nn.Module):
    """Weighted sum of a classification and a segmentation loss (see the module docstring).

    Args:
        cls_loss: the classification loss (:class:`ClassificationLoss`).
        seg_loss: the segmentation loss (:class:`SegmentationLoss`).
        weighting: ``"fixed"``, ``"dynamic"`` or ``"uncertainty"``.
        alpha, beta: classification / segmentation weights for ``"fixed"``.
        alpha_start, alpha_end, beta_start, beta_end: the linear ramps of ``"dynamic"``.
        init_log_var_cls, init_log_var_seg: initial ``s = log sigma^2`` for ``"uncertainty"``
            (0 means weights of 1).
    """

    def __init__(self, cls_loss: nn.Module, seg_loss: nn.Module, *, weighting: Weighting = "fixed",
                 alpha: float = 1.0, beta: float = 1.0,
                 alpha_start: float = 1.0, alpha_end: float = 1.0,
                 beta_start: float = 1.0, beta_end: float = 1.0,
                 init_log_var_cls: float = 0.0, init_log_var_seg: float = 0.0) -> None:
        super().__init__()
        if weighting not in ("fixed", "dynamic", "uncertainty"):
            raise ValueError(f"weighting must be 'fixed', 'dynamic' or 'uncertainty', got {weighting!r}")
        self.cls_loss = cls_loss
        self.seg_loss = seg_loss
        self.weighting = weighting
        self.alpha, self.beta = float(alpha), float(beta)
        self.alpha_start, self.alpha_end = float(alpha_start), float(alpha_end)
        self.beta_start, self.beta_end = float(beta_start), float(beta_end)
        if weighting == "uncertainty":
            self.log_var_cls = nn.Parameter(torch.tensor(float(init_log_var_cls)))
            self.log_var_seg = nn.Parameter(torch.tensor(float(init_log_var_seg)))
        else:
            self.log_var_cls = None
            self.log_var_seg = None

    def current_weights(self, *, step: int | None = None, total_steps: int | None = None) -> tuple[float, float]:
        """``(alpha, beta)`` for ``"fixed"`` / ``"dynamic"`` at ``step`` (not for ``"uncertainty"``)."""
        if self.weighting == "fixed":
            return self.alpha, self.beta
        if self.weighting == "dynamic":
            if step is None or total_steps is None:
                raise ValueError("dynamic weighting needs step and total_steps")
            return (dynamic_weight(step, total_steps=total_steps, start=self.alpha_start, end=self.alpha_end),
                    dynamic_weight(step, total_steps=total_steps, start=self.beta_start, end=self.beta_end))
        raise ValueError("uncertainty weights are learned: read log_var_cls / log_var_seg")

    def forward(self, seg_logits: Tensor, cls_logits: Tensor, mask: Tensor, label: Tensor, *,
                step: int | None = None, total_steps: int | None = None) -> LossOutput:
        """Compute both task losses and their weighted total.

        Args:
            seg_logits: segmentation logits (N, C, H, W), or (N, 1, H, W) in binary mode.
            cls_logits: classification logits (N, num_image_classes).
            mask: segmentation target (N, H, W), class indices (background 0).
            label: classification target (N,), image-class indices.
            step, total_steps: training progress, required by ``"dynamic"``, ignored otherwise.
        """
        l_cls = self.cls_loss(cls_logits, label)
        l_seg = self.seg_loss(seg_logits, mask)
        if self.weighting == "uncertainty":
            s_cls, s_seg = self.log_var_cls, self.log_var_seg
            w_cls, w_seg = torch.exp(-s_cls), torch.exp(-s_seg)
            total = w_cls * l_cls + s_cls + w_seg * l_seg + s_seg
            weights = {"alpha": float(w_cls.detach()), "beta": float(w_seg.detach()),
                       "log_var_cls": float(s_cls.detach()), "log_var_seg": float(s_seg.detach())}
        else:
            alpha, beta = self.current_weights(step=step, total_steps=total_steps)
            total = alpha * l_cls + beta * l_seg
            weights = {"alpha": alpha, "beta": beta}
        return LossOutput(total=total, cls=l_cls.detach(), seg=l_seg.detach(), weights=weights)
