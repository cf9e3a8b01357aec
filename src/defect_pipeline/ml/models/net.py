"""The multitask network itself, nothing about building it: :class:`MultitaskNet` (encoder, decoder,
segmentation head, image classification head), what it returns (:class:`MultitaskOutput`), its
classification head (:class:`PooledClassificationHead`) and its input-size contract
(:func:`check_input_size`). Backbone freezing and progressive dropout are methods of the network;
:mod:`defect_pipeline.ml.models.factory` assembles the parts.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MultitaskOutput(NamedTuple):
    """What :class:`MultitaskNet` returns."""

    seg_logits: Tensor
    """``(B, num_seg_classes, H, W)`` (``multiclass``) or ``(B, 1, H, W)`` (``binary``), at input resolution."""
    cls_logits: Tensor
    """``(B, num_image_classes)``."""


class MultitaskNet(nn.Module):
    """Backbone + segmentation decoder/head + image classification head.

    Submodules: ``encoder`` (smp ``TimmUniversalEncoder`` / ``TimmViTEncoder`` or
    :class:`~defect_pipeline.ml.models.vit_decoder.ViTFeatureEncoder`; its ``.model`` is the timm
    backbone), ``decoder``, ``segmentation_head`` and ``classification_head``. State-dict keys
    therefore follow smp (``encoder.model.*`` for the backbone).

    Attributes:
        backbone_name: timm model name (``"tu-"`` stripped).
        decoder_name: ``"fpn"``, ``"unet"``, ``"dpt"`` or ``"sfp"``.
        stride: input height and width must be multiples of it.
        hierarchical: whether the backbone is multi-scale (CNN / Swin) or a single-stride ViT.
        seg_mode: ``"multiclass"`` or ``"binary"``.
        num_seg_outputs: channels of ``seg_logits``.
        num_image_classes: columns of ``cls_logits``.
    """

    def __init__(
        self,
        *,
        encoder: nn.Module,
        decoder: nn.Module,
        segmentation_head: nn.Module,
        classification_head: nn.Module,
        backbone_name: str,
        decoder_name: str,
        stride: int,
        hierarchical: bool,
        seg_mode: str,
        num_seg_outputs: int,
        num_image_classes: int,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.segmentation_head = segmentation_head
        self.classification_head = classification_head
        self.backbone_name = backbone_name
        self.decoder_name = decoder_name
        self.stride = int(stride)
        self.hierarchical = hierarchical
        self.seg_mode = seg_mode
        self.num_seg_outputs = num_seg_outputs
        self.num_image_classes = num_image_classes
        self._backbone_frozen = False

    @property
    def backbone(self) -> nn.Module:
        """The timm feature extractor (the ``"backbone"`` parameter group)."""
        return self.encoder.model

    @property
    def backbone_frozen(self) -> bool:
        """Whether :meth:`freeze_backbone` is in effect."""
        return self._backbone_frozen

    def forward(self, x: Tensor) -> MultitaskOutput:
        """Segment and classify a ``(B, C, H, W)`` batch; ``H`` and ``W`` multiples of :attr:`stride`."""
        if not (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()):
            for size in x.shape[-2:]:
                check_input_size(self, int(size))
        if self.decoder_name == "dpt":
            features, prefix_tokens = self.encoder(x)
            decoded = self.decoder(features, prefix_tokens)
        else:
            features = self.encoder(x)
            decoded = self.decoder(features)
        seg_logits = self.segmentation_head(decoded)
        if seg_logits.shape[-2:] != x.shape[-2:]:
            seg_logits = F.interpolate(seg_logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        cls_logits = self.classification_head(features[-1], seg_logits)
        return MultitaskOutput(seg_logits, cls_logits)

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter outside the backbone (decoder, segmentation and classification heads)."""
        backbone_ids = {id(p) for p in self.backbone.parameters()}
        for param in self.parameters():
            if id(param) not in backbone_ids:
                yield param

    def _head_modules(self) -> Iterator[nn.Module]:
        backbone_ids = {id(m) for m in self.backbone.modules()}
        for module in self.modules():
            if id(module) not in backbone_ids:
                yield module

    def set_dropout(self, p: float) -> None:
        """Set ``p`` of every dropout layer of the decoder and heads (progressive dropout).

        Dropout layers inside the timm backbone (ViT attention/MLP dropout, normally 0) are
        left alone: they belong to the pretrained network's own configuration.
        """
        if not 0.0 <= float(p) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        for module in self._head_modules():
            if isinstance(module, nn.modules.dropout._DropoutNd):
                module.p = float(p)

    def freeze_backbone(self, frozen: bool = True) -> None:
        """Freeze (or unfreeze) the backbone.

        Frozen: ``requires_grad=False`` on every backbone parameter, and the backbone stays in
        eval mode (BatchNorm running statistics, dropout and drop-path fixed) even after
        ``model.train()``. Unfreezing restores gradients and follows the model's mode again.
        With LoRA adapters (:mod:`~defect_pipeline.ml.models.adapters`) only the adapters unfreeze:
        the backbone's own weights stay frozen.
        """
        adapted = any("lora_" in name for name, _ in self.backbone.named_parameters())
        for name, param in self.backbone.named_parameters():
            param.requires_grad = not frozen and (not adapted or "lora_" in name)
        self._backbone_frozen = bool(frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> MultitaskNet:
        """Like :meth:`nn.Module.train`, but a frozen backbone stays in eval mode."""
        super().train(mode)
        if self._backbone_frozen:
            self.backbone.eval()
        return self


class PooledClassificationHead(nn.Module):
    """Image classification: [average ‖ max pooled deepest features ‖ max segmentation logits].

    Average pooling alone dilutes a defect that covers 1 % of the image (a scratch, a pit) in
    the texture around it; the max-pooled half keeps such local evidence visible. The highest
    segmentation logit of each class (detached: classification does not push the segmentation)
    lets the dense, pixel-supervised task inform the image decision, which generalises far
    better on small datasets than pooled features alone.

    Used instead of smp's average-pooled ``aux_params`` head; its ``nn.Dropout`` is always present
    (``p`` may be 0) so :meth:`MultitaskNet.set_dropout` can raise it later.
    """

    def __init__(self, in_channels: int, classes: int, dropout: float = 0.0, seg_channels: int = 0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(p=dropout)
        self.linear = nn.Linear(2 * in_channels + seg_channels, classes)
        nn.init.xavier_uniform_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, features: Tensor, seg_logits: Tensor | None = None) -> Tensor:
        parts = [features.mean(dim=(2, 3)), features.amax(dim=(2, 3))]
        if seg_logits is not None:
            parts.append(seg_logits.detach().amax(dim=(2, 3)))
        return self.linear(self.dropout(torch.cat(parts, dim=1)))


def check_input_size(model_or_stride: MultitaskNet | int, image_size: int, *, name: str | None = None) -> None:
    """Raise ``ValueError`` unless ``image_size`` is a multiple of the model stride, at least twice it.

    The message names the two nearest valid sizes, e.g. ``"image size 100 is not a multiple of
    the model stride 32 for resnet18; use 96 or 128"``. The deepest feature map must be at least
    2×2: at 1×1 the decoder's normalisation layers (GroupNorm in FPN, BatchNorm in training) have
    one value per channel and fail on a batch of one image.
    """
    if isinstance(model_or_stride, int):
        stride = model_or_stride
        label = name or "this model"
    else:
        stride = int(model_or_stride.stride)
        label = name or getattr(model_or_stride, "backbone_name", "this model")
    size = int(image_size)
    if size > 0 and size % stride == 0:
        if size < 2 * stride:
            raise ValueError(f"image size {size} gives a 1x1 deepest feature map with the model stride {stride} "
                             f"for {label}; use at least {2 * stride}")
        return
    lower = (size // stride) * stride
    options = " or ".join(str(c) for c in (lower, lower + stride) if c >= 2 * stride) or str(2 * stride)
    raise ValueError(f"image size {size} is not a multiple of the model stride {stride} for {label}; use {options}")
