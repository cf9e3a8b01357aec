"""Building a :class:`~defect_pipeline.ml.models.net.MultitaskNet` by backbone name: :func:`create_model`
checks its arguments, resolves and probes the timm backbone, picks a decoder from the registry, builds
the parts in a fixed order (so one seed always gives the same weights) and loads local backbone
weights; :func:`check_model_config` runs the same build on the meta device to refuse a bad model block
before a stage starts.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from defect_pipeline.ml.models.backbones import BackboneInfo, probe_backbone, resolve_backbone_name
from defect_pipeline.ml.models.decoders import (
    check_decoder_width,
    choose_decoder,
    create_decoder_parts,
    decoder_stride,
)
from defect_pipeline.ml.models.net import MultitaskNet, PooledClassificationHead, check_input_size
from defect_pipeline.ml.models.weights import load_backbone_weights

logger = logging.getLogger(__name__)

SEG_MODES = ("multiclass", "binary")


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
        pretrained: let timm download pretrained weights (needs the network; offline the error
            says to use ``checkpoint_path``).
        checkpoint_path: local ``.safetensors`` / torch state dict loaded into the backbone
            after building with random weights (see :func:`load_backbone_weights`). With neither
            this nor ``pretrained`` the backbone is randomly initialised (a warning says so).
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
    _check_arguments(num_image_classes=num_image_classes, num_seg_classes=num_seg_classes, seg_mode=seg_mode,
                     dropout=dropout, decoder_channels=decoder_channels, pretrained=pretrained,
                     checkpoint_path=checkpoint_path)
    name = resolve_backbone_name(backbone)
    info = probe_backbone(name)
    decoder_name = choose_decoder(decoder, info)
    check_decoder_width(decoder_name, decoder_channels)
    stride = decoder_stride(decoder_name, info)
    if image_size is not None:
        check_input_size(stride, image_size, name=name)

    seg_channels = 1 if seg_mode == "binary" else int(num_seg_classes)
    parts = _build_parts(
        info,
        decoder_name,
        seg_channels=seg_channels,
        num_image_classes=int(num_image_classes),
        pretrained=pretrained,
        decoder_channels=int(decoder_channels),
        dropout=float(dropout),
        timm_kwargs=_timm_kwargs(info, image_size),
    )
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
    model.set_dropout(dropout)  # also resets smp's hard-coded Dropout(0.1) in the DPT head
    _init_backbone_weights(model, checkpoint_path=checkpoint_path, pretrained=pretrained)
    return model


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


def input_stride(backbone: str, *, decoder: str = "auto") -> int:
    """The multiple every input side must be for ``backbone`` with ``decoder`` (probed on the meta device)."""
    info = probe_backbone(resolve_backbone_name(backbone))
    return decoder_stride(choose_decoder(decoder, info), info)


def _check_arguments(*, num_image_classes: int, num_seg_classes: int, seg_mode: str, dropout: float,
                     decoder_channels: int, pretrained: bool, checkpoint_path: str | None) -> None:
    """The checks that need no backbone: ``ValueError`` / ``FileNotFoundError`` naming the bad argument."""
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


def _timm_kwargs(info: BackboneInfo, image_size: int | None) -> dict[str, Any]:
    """Extra timm arguments: ``dynamic_img_size=True`` where accepted (ViTs, Swin: any compatible input
    size works), and ``img_size`` for ViTs only (it sizes the stored position embedding). ``img_size`` is
    never passed to hierarchical models: for Swin it shrinks the attention windows and so changes
    parameter shapes (checkpoints would no longer load)."""
    timm_kwargs: dict[str, Any] = {}
    if info.dynamic_img_size:
        timm_kwargs["dynamic_img_size"] = True
    if image_size is not None and not info.hierarchical:
        timm_kwargs["img_size"] = int(image_size)
    return timm_kwargs


def _build_parts(info: BackboneInfo, decoder_name: str, *, seg_channels: int, num_image_classes: int,
                 pretrained: bool, decoder_channels: int, dropout: float,
                 timm_kwargs: dict[str, Any]) -> dict[str, nn.Module]:
    """Encoder, decoder and segmentation head from the registry, then the classification head (this
    order fixes the random initialisation); a failed hub download becomes a ``RuntimeError`` that
    points to ``checkpoint_path``."""
    try:
        parts = create_decoder_parts(decoder_name, info, seg_channels=seg_channels, pretrained=bool(pretrained),
                                     decoder_channels=decoder_channels, dropout=dropout, timm_kwargs=timm_kwargs)
        parts["classification_head"] = PooledClassificationHead(parts["encoder"].out_channels[-1], num_image_classes,
                                                                dropout, seg_channels)
    except Exception as exc:
        if pretrained:
            raise RuntimeError(
                f"could not get pretrained weights for {info.name} from timm / the Hugging Face hub ({exc}). "
                "Offline, fetch the weights elsewhere and use pretrained=False with "
                "checkpoint_path=<local .safetensors or .pth state dict> (HF_HUB_OFFLINE=1 makes the "
                "hub fail fast instead of retrying)."
            ) from exc
        raise
    return parts


def _init_backbone_weights(model: MultitaskNet, *, checkpoint_path: str | None, pretrained: bool) -> None:
    """Load ``checkpoint_path`` into the backbone, or warn that it keeps its random initialisation."""
    name = model.backbone_name
    if checkpoint_path is not None:
        result = load_backbone_weights(model, str(checkpoint_path))
        if result["missing"]:
            warnings.warn(
                f"{checkpoint_path}: {len(result['missing'])} backbone tensors of {name} were not in the "
                f"checkpoint and keep their random initialisation (first: {result['missing'][:5]})",
                stacklevel=3,
            )
        logger.info("loaded %d backbone tensors of %s from %s", result["loaded"], name, checkpoint_path)
    elif not pretrained:
        warnings.warn(
            f"{name}: no pretrained weights and no checkpoint_path, the backbone uses random initialisation",
            UserWarning,
            stacklevel=3,
        )
