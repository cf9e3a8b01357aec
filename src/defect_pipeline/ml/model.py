"""Multitask defect network: a timm backbone, a segmentation decoder and an image classifier.

:func:`create_model` builds a :class:`MultitaskNet` whose ``forward`` returns a
:class:`MultitaskOutput` with per-pixel segmentation logits at input resolution and image-level
classification logits. The classification head pools the deepest backbone feature map.

Which decoder serves which backbone is decided from the timm model itself, never from its name:
the backbone is probed on the meta device with ``features_only=True`` and its
``feature_info.reduction()`` is inspected.

* Hierarchical backbones (reductions grow, e.g. ResNet ``2..32``, ConvNeXt / Swin ``4..32``):
  segmentation-models-pytorch ``FPN`` (``decoder="fpn"``, the default) or ``Unet``
  (``decoder="unet"``) on the ``"tu-<timm name>"`` encoder
  and :class:`PooledClassificationHead`. Stride 32.
* Non-hierarchical ViTs (all reductions equal to the patch size, e.g. ViT, DINOv2):

  - ``decoder="dpt"``: smp's ``DPT``. It only works when the patch size is a power of two: its
    reassemble blocks use ``int(patch / 4)``-style resampling factors, which truncate for patch 14
    (every DINOv2 size fails with a shape mismatch), and even for patch 16 the 1/32 level is made
    by a stride-2 conv, so the input must be a multiple of 32 although smp's own shape check only
    asks for 16. Here its stride is therefore 32.
  - ``decoder="sfp"``: a small ViTDet-style simple feature pyramid written here
    (:class:`SimpleFeaturePyramidDecoder`): four blocks sampled uniformly through the ViT are
    resampled to 4x, 2x, 1x and 0.5x of the patch grid, fused top-down FPN style with size-exact
    interpolation, summed and projected. It works for any patch size at any multiple of the
    patch size (stride = patch size).
  - ``decoder="auto"``: ``dpt`` for power-of-two patch sizes (ViT-B/16, ViT-L/16), ``sfp``
    otherwise (DINOv2 /14).

ViTs and Swin are built with timm's ``dynamic_img_size=True`` so any compatible input size works.
``image_size`` is passed to timm as ``img_size`` only for ViTs (it sizes the stored position
embedding); it is never passed to hierarchical models because for Swin it shrinks the attention
windows and so changes parameter shapes (checkpoints would no longer load).

The classification head is our :class:`PooledClassificationHead` (average + max pooling, with
an ``nn.Dropout`` always present so :meth:`MultitaskNet.set_dropout` can raise it later), not
smp's average-pooled ``aux_params`` head. smp quirks handled here: its FPN decoder uses ``GroupNorm(32, C)`` so ``decoder_channels`` must be a
multiple of 32 there; DPT hard-codes ``Dropout(0.1)`` in its head (reset to ``dropout``) and
builds a full timm classifier whose final norm and head are unused (pruned here, so every
backbone parameter receives a gradient).

Weights: ``pretrained=True`` lets timm fetch weights from its hub (fails offline, the error then
says to use ``checkpoint_path``); ``checkpoint_path`` loads a local file into the backbone with
:func:`load_backbone_weights`; with neither the backbone is randomly initialised (a warning says
so).
"""

from __future__ import annotations

import difflib
import logging
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)

SEG_MODES = ("multiclass", "binary")
DECODERS = ("auto", "fpn", "unet", "dpt", "sfp")

_BACKBONE_FAMILIES: dict[str, list[str]] = {
    "resnet": ["resnet18", "resnet34", "resnet50", "resnet101"],
    "efficientnet": ["efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3"],
    "convnext": ["convnext_atto", "convnext_tiny", "convnext_small", "convnext_base", "convnext_large"],
    "swin": [
        "swin_tiny_patch4_window7_224",
        "swin_small_patch4_window7_224",
        "swin_base_patch4_window7_224",
        "swin_large_patch4_window7_224",
    ],
    "vit": ["vit_small_patch16_224", "vit_base_patch16_224", "vit_large_patch16_224"],
    "dinov2": [
        "vit_small_patch14_dinov2",
        "vit_base_patch14_dinov2",
        "vit_large_patch14_dinov2",
        "vit_giant_patch14_dinov2",
    ],
}

# Prefixes that wrappers put in front of backbone keys (DDP, torch.compile, Lightning, smp, ...).
_KEY_PREFIXES = ("module.", "_orig_mod.", "model.", "backbone.", "encoder.model.", "encoder.")
# Checkpoint containers that hold the actual state dict one level down.
_NESTED_STATE_KEYS = ("state_dict", "model", "model_state_dict", "module", "backbone", "teacher")


class MultitaskOutput(NamedTuple):
    """What :class:`MultitaskNet` returns."""

    seg_logits: Tensor
    """``(B, num_seg_classes, H, W)`` (``multiclass``) or ``(B, 1, H, W)`` (``binary``), at input resolution."""
    cls_logits: Tensor
    """``(B, num_image_classes)``."""


# --------------------------------------------------------------------------------------------
# ViT pieces (the smp encoders/decoders cover the hierarchical backbones and DPT)
# --------------------------------------------------------------------------------------------


class ViTFeatureEncoder(nn.Module):
    """Wraps a timm ``features_only`` ViT (``FeatureGetterNet``) as an encoder with ``.model``.

    ``forward`` returns one NCHW map per selected block, all at ``1 / patch_size``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.out_channels: list[int] = list(model.feature_info.channels())

    def forward(self, x: Tensor) -> list[Tensor]:
        return list(self.model(x))


def _groups(channels: int) -> int:
    return math.gcd(32, channels)


class _ConvNormAct(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.GroupNorm(_groups(out_channels), out_channels),
            nn.ReLU(inplace=True),
        )


def _resampler(channels: int, scale: float) -> nn.Module:
    if scale == 4:
        return nn.Sequential(
            nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2),
            nn.GroupNorm(_groups(channels), channels),
            nn.GELU(),
            nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2),
        )
    if scale == 2:
        return nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2)
    if scale == 1:
        return nn.Identity()
    if scale == 0.5:
        return nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)
    raise ValueError(f"unsupported pyramid scale {scale}")


class SimpleFeaturePyramidDecoder(nn.Module):
    """ViTDet-style simple feature pyramid + FPN-like fusion for single-stride (ViT) features.

    Four ViT block outputs (shallow to deep, all at ``1/p``) are projected to ``channels``,
    resampled to ``4x``, ``2x``, ``1x`` and ``0.5x`` of the patch grid, fused top-down (sizes
    matched exactly, so any grid size works, odd ones included), refined per level, upsampled to
    the finest level and summed; spatial dropout follows. Output: ``(B, channels, 4g, 4g)``.
    """

    SCALES = (4.0, 2.0, 1.0, 0.5)

    def __init__(self, in_channels: Sequence[int], channels: int = 64, dropout: float = 0.0) -> None:
        super().__init__()
        if len(in_channels) != len(self.SCALES):
            raise ValueError(
                f"SimpleFeaturePyramidDecoder needs {len(self.SCALES)} feature maps, got {len(in_channels)}"
            )
        self.lateral = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(cin, channels, kernel_size=1),
                _resampler(channels, scale),
                _ConvNormAct(channels, channels),
            )
            for cin, scale in zip(in_channels, self.SCALES)
        )
        self.smooth = nn.ModuleList(_ConvNormAct(channels, channels) for _ in self.SCALES)
        self.dropout = nn.Dropout2d(p=dropout)
        self.out_channels = channels

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        laterals = [block(f) for block, f in zip(self.lateral, features)]  # finest first
        top = laterals[-1]
        fused = [top]
        for lateral in reversed(laterals[:-1]):
            top = lateral + F.interpolate(top, size=lateral.shape[-2:], mode="nearest")
            fused.append(top)
        fused.reverse()  # finest first
        size = fused[0].shape[-2:]
        out = self.smooth[0](fused[0])
        for smooth, level in zip(self.smooth[1:], fused[1:]):
            out = out + F.interpolate(smooth(level), size=size, mode="bilinear", align_corners=False)
        return self.dropout(out)


# --------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------


class MultitaskNet(nn.Module):
    """Backbone + segmentation decoder/head + image classification head.

    Submodules: ``encoder`` (smp ``TimmUniversalEncoder`` / ``TimmViTEncoder`` or
    :class:`ViTFeatureEncoder`; its ``.model`` is the timm backbone), ``decoder``,
    ``segmentation_head`` and ``classification_head``. State-dict keys therefore follow smp
    (``encoder.model.*`` for the backbone).

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
        """
        for param in self.backbone.parameters():
            param.requires_grad = not frozen
        self._backbone_frozen = bool(frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> MultitaskNet:
        """Like :meth:`nn.Module.train`, but a frozen backbone stays in eval mode."""
        super().train(mode)
        if self._backbone_frozen:
            self.backbone.eval()
        return self


# --------------------------------------------------------------------------------------------
# Construction
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _BackboneInfo:
    name: str
    reductions: tuple[int, ...]
    channels: tuple[int, ...]
    dynamic_img_size: bool  # accepts timm's dynamic_img_size
    num_blocks: int  # ViTs: number of transformer blocks
    num_prefix_tokens: int  # ViTs: cls/register tokens

    @property
    def hierarchical(self) -> bool:
        return len(set(self.reductions)) > 1

    @property
    def patch_size(self) -> int:
        return self.reductions[0]


def list_backbone_families() -> dict[str, list[str]]:
    """Family name → the timm model names this module is tested with (meta-device build + forward)."""
    return {family: list(names) for family, names in _BACKBONE_FAMILIES.items()}


def _resolve_backbone_name(backbone: str) -> str:
    import timm

    name = backbone.strip()
    if name.startswith("tu-"):
        name = name[3:]
    if timm.is_model(name):
        return name
    query = name.split(".")[0].lower()
    models = timm.list_models()
    close = difflib.get_close_matches(query, models, n=6, cutoff=0.6)
    if not close:  # e.g. "dinov2_vitb14" or "swin_t": rank the models sharing a word with the query
        words = [w for w in re.split(r"[^a-z0-9]+", query) if len(w) >= 3]
        sharing = [m for m in models if any(w in m for w in words)]
        close = sorted(sharing, key=lambda m: -difflib.SequenceMatcher(None, query, m).ratio())[:6]
    hint = f"close timm names: {', '.join(close)}" if close else "see timm.list_models() for the valid names"
    raise ValueError(f"unknown backbone {backbone!r}: not a timm model; {hint}")


def _probe_backbone(name: str) -> _BackboneInfo:
    """Build the timm feature extractor on the meta device to learn its shape (no memory, no download)."""
    import timm

    dynamic = True
    try:
        with torch.device("meta"):
            try:
                probe = timm.create_model(name, pretrained=False, features_only=True, dynamic_img_size=True)
            except TypeError:
                dynamic = False
                probe = timm.create_model(name, pretrained=False, features_only=True)
    except Exception as exc:  # noqa: BLE001 - any timm failure means "not usable here"
        raise ValueError(
            f"backbone {name!r} cannot be built as a timm feature extractor (features_only): {exc}"
        ) from exc
    inner = getattr(probe, "model", None)
    inner_info = getattr(inner, "feature_info", None)
    return _BackboneInfo(
        name=name,
        reductions=tuple(probe.feature_info.reduction()),
        channels=tuple(probe.feature_info.channels()),
        dynamic_img_size=dynamic,
        num_blocks=len(inner_info) if isinstance(inner_info, list) else len(probe.feature_info),
        num_prefix_tokens=int(getattr(inner, "num_prefix_tokens", 0) or 0),
    )


def _choose_decoder(decoder: str, info: _BackboneInfo) -> str:
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    power_of_two = info.patch_size & (info.patch_size - 1) == 0
    if info.hierarchical:
        if decoder == "auto":
            return "fpn"
        if decoder not in ("fpn", "unet"):
            raise ValueError(
                f"decoder {decoder!r} is for single-stride ViTs; {info.name} is hierarchical: use fpn or unet"
            )
        return decoder
    if decoder == "auto":
        return "dpt" if power_of_two and info.patch_size <= 32 else "sfp"
    if decoder in ("fpn", "unet"):
        raise ValueError(
            f"decoder {decoder!r} needs a multi-scale backbone; {info.name} has a single stride "
            f"{info.patch_size}: use dpt or sfp"
        )
    if decoder == "dpt" and not (power_of_two and info.patch_size <= 32):
        raise ValueError(
            f"smp's DPT only works with power-of-two patch sizes; {info.name} has patch size "
            f"{info.patch_size}: use decoder='sfp'"
        )
    return decoder


class PooledClassificationHead(nn.Module):
    """Image classification: [average ‖ max pooled deepest features ‖ max segmentation logits].

    Average pooling alone dilutes a defect that covers 1 % of the image (a scratch, a pit) in
    the texture around it; the max-pooled half keeps such local evidence visible. The highest
    segmentation logit of each class (detached: classification does not push the segmentation)
    lets the dense, pixel-supervised task inform the image decision, which generalises far
    better on small datasets than pooled features alone.
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


def _build_parts(
    info: _BackboneInfo,
    decoder_name: str,
    *,
    seg_channels: int,
    num_image_classes: int,
    pretrained: bool,
    decoder_channels: int,
    dropout: float,
    timm_kwargs: dict[str, Any],
) -> dict[str, Any]:
    import segmentation_models_pytorch as smp
    import timm
    from segmentation_models_pytorch.base import SegmentationHead
    from segmentation_models_pytorch.base import initialization as smp_init

    aux_params = None  # the classification head is PooledClassificationHead, added below
    weights = True if pretrained else None
    if decoder_name == "fpn":
        net = smp.FPN(
            encoder_name=f"tu-{info.name}",
            encoder_depth=5,
            encoder_weights=weights,
            decoder_pyramid_channels=decoder_channels,
            decoder_segmentation_channels=decoder_channels,
            decoder_merge_policy="add",
            decoder_dropout=dropout,
            classes=seg_channels,
            upsampling=4,
            aux_params=aux_params,
            **timm_kwargs,
        )
    elif decoder_name == "unet":
        c = decoder_channels
        net = smp.Unet(
            encoder_name=f"tu-{info.name}",
            encoder_depth=5,
            encoder_weights=weights,
            decoder_channels=(4 * c, 2 * c, c, max(c // 2, 1), max(c // 4, 1)),
            classes=seg_channels,
            aux_params=aux_params,
            **timm_kwargs,
        )
    elif decoder_name == "dpt":
        c = decoder_channels
        net = smp.DPT(
            encoder_name=f"tu-{info.name}",
            encoder_depth=4,
            encoder_weights=weights,
            decoder_readout="cat" if info.num_prefix_tokens else "ignore",
            decoder_intermediate_channels=(c, 2 * c, 4 * c, 4 * c),
            decoder_fusion_channels=c,
            classes=seg_channels,
            aux_params=aux_params,
            num_classes=0,
            **timm_kwargs,
        )
        # drop the blocks after the last tapped one, the final norm and the classifier: unused
        net.encoder.model.prune_intermediate_layers(
            list(net.encoder._output_indices), prune_norm=True, prune_head=True
        )
    else:  # sfp
        n = info.num_blocks
        indices = [int(n / 4 * k) - 1 for k in range(1, 5)]
        features = timm.create_model(
            info.name, pretrained=pretrained, features_only=True, out_indices=indices, **timm_kwargs
        )
        encoder = ViTFeatureEncoder(features)
        decoder = SimpleFeaturePyramidDecoder(encoder.out_channels, channels=decoder_channels, dropout=dropout)
        segmentation_head = SegmentationHead(decoder_channels, seg_channels, kernel_size=1)
        smp_init.initialize_decoder(decoder)
        smp_init.initialize_head(segmentation_head)
        return {
            "encoder": encoder,
            "decoder": decoder,
            "segmentation_head": segmentation_head,
            "classification_head": PooledClassificationHead(encoder.out_channels[-1], num_image_classes, dropout,
                                                            seg_channels),
        }
    return {
        "encoder": net.encoder,
        "decoder": net.decoder,
        "segmentation_head": net.segmentation_head,
        "classification_head": PooledClassificationHead(net.encoder.out_channels[-1], num_image_classes, dropout,
                                                        seg_channels),
    }


def create_model(
    backbone: str,
    *,
    num_image_classes: int,
    num_seg_classes: int,
    seg_mode: str = "multiclass",
    decoder: str = "auto",
    pretrained: bool = False,
    checkpoint_path: str | None = None,
    decoder_channels: int = 64,
    dropout: float = 0.0,
    image_size: int | None = None,
) -> MultitaskNet:
    """Build a :class:`MultitaskNet` on a timm backbone.

    Args:
        backbone: timm model name (``"tu-"`` prefix and pretrained tags like ``.fb_in22k`` allowed).
        num_image_classes: classification outputs (``LabelSpace.num_image_classes``).
        num_seg_classes: segmentation classes incl. background (``LabelSpace.num_seg_classes``).
        seg_mode: ``"multiclass"`` (``num_seg_classes`` channels) or ``"binary"`` (1 channel).
        decoder: ``auto`` (``fpn`` for hierarchical backbones, ``dpt`` for power-of-two-patch
            ViTs, ``sfp`` otherwise), ``fpn``, ``unet``, ``dpt`` or ``sfp``.
        pretrained: let timm download pretrained weights (needs the network).
        checkpoint_path: local ``.safetensors`` / torch state dict loaded into the backbone
            after building with random weights (see :func:`load_backbone_weights`).
        decoder_channels: decoder width ``c``: FPN pyramid and segmentation channels (a multiple
            of 32, smp uses ``GroupNorm(32)``); Unet decoder ``(4c, 2c, c, c/2, c/4)`` (smp's
            default at 64); DPT fusion ``c`` with reassemble ``(c, 2c, 4c, 4c)``; sfp width ``c``.
        dropout: initial p of every decoder / classification-head dropout layer.
        image_size: training image size; checked against the stride, and for ViTs used as timm
            ``img_size`` (size of the stored position embedding).

    Raises:
        ValueError: unknown backbone (with close timm names), bad argument, or image size that
            is not a multiple of the stride.
        RuntimeError: ``pretrained=True`` and timm could not fetch the weights.
    """
    if seg_mode not in SEG_MODES:
        raise ValueError(f"seg_mode must be one of {SEG_MODES}, got {seg_mode!r}")
    if int(num_image_classes) < 1:
        raise ValueError(f"num_image_classes must be >= 1, got {num_image_classes}")
    if seg_mode == "multiclass" and int(num_seg_classes) < 2:
        raise ValueError(
            f"multiclass segmentation needs num_seg_classes >= 2 (background + defects), got {num_seg_classes}"
        )
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if int(decoder_channels) < 4:
        raise ValueError(f"decoder_channels must be >= 4, got {decoder_channels}")
    if pretrained and checkpoint_path:
        raise ValueError("give either pretrained=True (timm hub download) or checkpoint_path (local file), not both")
    if checkpoint_path is not None and not Path(checkpoint_path).is_file():
        raise FileNotFoundError(f"backbone checkpoint {checkpoint_path} does not exist")

    name = _resolve_backbone_name(backbone)
    info = _probe_backbone(name)
    decoder_name = _choose_decoder(decoder, info)
    if decoder_name == "fpn" and decoder_channels % 32:
        raise ValueError(
            f"decoder_channels must be a multiple of 32 for the FPN decoder (GroupNorm(32)), got {decoder_channels}"
        )
    if info.hierarchical:
        stride = max(info.reductions)
    elif decoder_name == "dpt":
        stride = max(32, info.patch_size)
    else:
        stride = info.patch_size
    if image_size is not None:
        check_input_size(stride, image_size, name=name)

    timm_kwargs: dict[str, Any] = {}
    if info.dynamic_img_size:
        timm_kwargs["dynamic_img_size"] = True
    if image_size is not None and not info.hierarchical:
        timm_kwargs["img_size"] = int(image_size)

    seg_channels = 1 if seg_mode == "binary" else int(num_seg_classes)
    try:
        parts = _build_parts(
            info,
            decoder_name,
            seg_channels=seg_channels,
            num_image_classes=int(num_image_classes),
            pretrained=bool(pretrained),
            decoder_channels=int(decoder_channels),
            dropout=float(dropout),
            timm_kwargs=timm_kwargs,
        )
    except Exception as exc:
        if pretrained:
            raise RuntimeError(
                f"could not get pretrained weights for {name} from timm / the Hugging Face hub ({exc}). "
                "Offline, fetch the weights elsewhere and use pretrained=False with "
                "checkpoint_path=<local .safetensors or .pth state dict> (HF_HUB_OFFLINE=1 makes the "
                "hub fail fast instead of retrying)."
            ) from exc
        raise

    model = MultitaskNet(
        **parts,
        backbone_name=name,
        decoder_name=decoder_name,
        stride=stride,
        hierarchical=info.hierarchical,
        seg_mode=seg_mode,
        num_seg_outputs=seg_channels,
        num_image_classes=int(num_image_classes),
    )
    model.set_dropout(dropout)

    if checkpoint_path is not None:
        result = load_backbone_weights(model, str(checkpoint_path))
        if result["missing"]:
            warnings.warn(
                f"{checkpoint_path}: {len(result['missing'])} backbone tensors of {name} were not in the "
                f"checkpoint and keep their random initialisation (first: {result['missing'][:5]})",
                stacklevel=2,
            )
        logger.info("loaded %d backbone tensors of %s from %s", result["loaded"], name, checkpoint_path)
    elif not pretrained:
        warnings.warn(
            f"{name}: no pretrained weights and no checkpoint_path, the backbone uses random initialisation",
            UserWarning,
            stacklevel=2,
        )
    return model


# --------------------------------------------------------------------------------------------
# Weights, sizes, counts
# --------------------------------------------------------------------------------------------


def _read_state_dict(path: str) -> dict[str, Any]:
    if not Path(path).is_file():
        raise FileNotFoundError(f"backbone checkpoint {path} does not exist")
    from defect_pipeline.ml.checkpoint import read_weights_file  # the one weights-only loader

    return read_weights_file(path)


def _unwrap_state_dict(obj: Any, source: str) -> dict[str, Tensor]:
    """The tensors of a state dict, unwrapping ``{"state_dict": ...}`` / ``{"model": ...}``."""
    for _ in range(3):
        if not isinstance(obj, dict):
            break
        if any(isinstance(v, Tensor) for v in obj.values()):
            break
        nested = [obj[k] for k in _NESTED_STATE_KEYS if isinstance(obj.get(k), dict)]
        if not nested:
            break
        obj = nested[0]
    if not isinstance(obj, dict):
        raise ValueError(f"{source} does not hold a state dict (got {type(obj).__name__})")
    return {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}


def _strip_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _KEY_PREFIXES:
            if key.startswith(prefix) and len(key) > len(prefix):
                key = key[len(prefix):]
                changed = True
    return key


def _canonical(key: str) -> str:
    # timm's FeatureListNet flattens "stages.0" into "stages_0": compare with both separators equal
    return _strip_prefixes(key).replace(".", "_")


def _pos_embed_target(backbone: nn.Module) -> nn.Module | None:
    for module in (backbone, getattr(backbone, "model", None)):
        if module is not None and isinstance(getattr(module, "pos_embed", None), Tensor):
            return module
    return None


def _resample_pos_embed(backbone: nn.Module, value: Tensor, target_shape: torch.Size) -> Tensor | None:
    """Resize a checkpoint's ViT position embedding to the model's patch grid, if that is what differs."""
    vit = _pos_embed_target(backbone)
    if vit is None or value.ndim != 3 or len(target_shape) != 3 or value.shape[-1] != target_shape[-1]:
        return None
    from timm.layers import resample_abs_pos_embed

    prefix = 0 if getattr(vit, "no_embed_class", False) else int(getattr(vit, "num_prefix_tokens", 0) or 0)
    grid = getattr(getattr(vit, "patch_embed", None), "grid_size", None)
    if grid is None:
        return None
    old_tokens = value.shape[1] - prefix
    side = int(round(math.sqrt(old_tokens)))
    if side * side != old_tokens or target_shape[1] != grid[0] * grid[1] + prefix:
        return None
    return resample_abs_pos_embed(value, new_size=list(grid), old_size=[side, side], num_prefix_tokens=prefix)


def load_backbone_weights(model: MultitaskNet, path: str) -> dict:
    """Load a local checkpoint into ``model.backbone``.

    Accepts ``.safetensors`` or a torch state dict (read with ``torch.load(path,
    map_location="cpu", weights_only=True)``, so pickles with arbitrary objects are refused),
    optionally wrapped in ``{"state_dict": ...}`` / ``{"model": ...}``. Keys may carry
    ``module.``, ``_orig_mod.``, ``model.``, ``backbone.``, ``encoder.model.`` or ``encoder.``
    prefixes, and may come from the plain timm classifier (``stages.0`` matches the feature
    extractor's ``stages_0``). Shapes must match exactly, except a ViT ``pos_embed`` for another
    image size, which is resampled to the model's patch grid. Keys that are not backbone keys
    (classifier head, decoder) are reported as unexpected.

    Returns:
        ``{"loaded": n, "missing": [backbone keys not in the file], "unexpected": [file keys not used]}``

    Raises:
        ValueError: a shape mismatch, an unreadable / unsafe file, or no key matching at all.
    """
    return load_backbone_state(model, _read_state_dict(path), source=path)


def load_backbone_state(model: MultitaskNet, checkpoint: dict[str, Any], *, source: str) -> dict:
    """:func:`load_backbone_weights` for a checkpoint already read into memory (``source`` names it)."""
    state = _unwrap_state_dict(checkpoint, source)
    backbone = model.backbone
    target = backbone.state_dict()

    by_canonical: dict[str, str] = {}
    ambiguous: set[str] = set()
    for key in target:
        canon = _canonical(key)
        if canon in by_canonical:
            ambiguous.add(canon)
        by_canonical[canon] = key
    for canon in ambiguous:
        del by_canonical[canon]
    by_exact = {_strip_prefixes(k): k for k in target}

    matched: dict[str, Tensor] = {}
    unexpected: list[str] = []
    mismatched: list[str] = []
    for key, value in state.items():
        model_key = by_exact.get(_strip_prefixes(key)) or by_canonical.get(_canonical(key))
        if model_key is None or model_key in matched:
            unexpected.append(key)
            continue
        expected = target[model_key].shape
        if value.shape != expected:
            resized = _resample_pos_embed(backbone, value, expected) if model_key.endswith("pos_embed") else None
            if resized is None:
                mismatched.append(f"{key}: {tuple(value.shape)} in file vs {tuple(expected)} in model")
                continue
            value = resized
        matched[model_key] = value
    if mismatched:
        raise ValueError(
            f"{source}: {len(mismatched)} tensors do not fit backbone {model.backbone_name}: " + "; ".join(mismatched[:5])
        )
    if not matched:
        raise ValueError(
            f"{source}: none of its {len(state)} tensors match backbone {model.backbone_name} "
            f"(file keys look like {list(state)[:3]}, backbone keys like {list(target)[:3]})"
        )
    backbone.load_state_dict(matched, strict=False)
    missing = [k for k in target if k not in matched]
    return {"loaded": len(matched), "missing": missing, "unexpected": unexpected}


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


def count_parameters(model: nn.Module) -> dict:
    """Parameter counts: ``total``, ``trainable``, ``frozen``, ``backbone`` and ``head`` (= total - backbone)."""
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    backbone = getattr(model, "backbone", None)
    in_backbone = sum(p.numel() for p in backbone.parameters()) if isinstance(backbone, nn.Module) else 0
    return {
        "total": total,
        "trainable": trainable,
        "frozen": total - trainable,
        "backbone": in_backbone,
        "head": total - in_backbone,
    }


def training_memory_estimate(backbone: str, *, num_image_classes: int, num_seg_classes: int, decoder: str = "auto",
                             decoder_channels: int = 64, image_size: int | None = None,
                             seg_mode: str = "multiclass") -> dict[str, float]:
    """Parameters of a model (built on the meta device: nothing allocated) and the memory its training
    state needs at least: fp32 weights, gradients and AdamW's two moments, 16 bytes per parameter.
    Activations come on top, so this is a lower bound used to refuse hopeless choices early."""
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = create_model(backbone, num_image_classes=num_image_classes, num_seg_classes=num_seg_classes,
                           seg_mode=seg_mode, decoder=decoder, decoder_channels=decoder_channels,
                           image_size=image_size)
    params = sum(p.numel() for p in net.parameters())
    return {"parameters": float(params), "state_bytes": float(params * 16)}


def check_model_config(backbone: str, *, decoder: str = "auto", decoder_channels: int = 64,
                       image_size: int | None = None, seg_mode: str = "multiclass") -> None:
    """Raise ``ValueError`` now for a model block that would fail when a stage starts.

    Builds the model on the meta device (no memory, no download): unknown backbone (with close
    timm names), a decoder that does not fit the backbone, a decoder width the decoder cannot
    take, an image size that is not a multiple of the stride (or gives a 1x1 deepest map).
    """
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = create_model(backbone, num_image_classes=2, num_seg_classes=2, seg_mode=seg_mode, decoder=decoder,
                           decoder_channels=decoder_channels, image_size=image_size)
    if image_size is not None:
        check_input_size(net, image_size)
