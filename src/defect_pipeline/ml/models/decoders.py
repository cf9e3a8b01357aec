"""Segmentation decoders by name, in a registry like timm's: each builder is registered with
``@register_decoder("<name>")`` and :func:`create_decoder_parts` looks it up, so adding a decoder is
one decorated function. Builders return the encoder (carrying the timm backbone as ``.model``), the
decoder and the segmentation head; the classification head is added by the factory. This module also
holds everything decoder-specific the factory needs: which decoder fits which backbone
(:func:`choose_decoder`), the width each accepts (:func:`check_decoder_width`) and the input stride
it imposes (:func:`decoder_stride`).
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from defect_pipeline.ml.models.backbones import BackboneInfo
from defect_pipeline.ml.models.vit_decoder import SimpleFeaturePyramidDecoder, ViTFeatureEncoder

DecoderBuilder = Callable[..., dict[str, nn.Module]]
"""``builder(info, *, seg_channels, pretrained, decoder_channels, dropout, timm_kwargs)`` →
``{"encoder": ..., "decoder": ..., "segmentation_head": ...}``."""

_DECODER_REGISTRY: dict[str, DecoderBuilder] = {}


def register_decoder(name: str) -> Callable[[DecoderBuilder], DecoderBuilder]:
    """Decorator: register a decoder builder under ``name`` (used as ``model.decoder`` in the parameters)."""

    def decorate(builder: DecoderBuilder) -> DecoderBuilder:
        if name == "auto" or name in _DECODER_REGISTRY:
            raise ValueError(f"decoder name {name!r} is reserved or already registered")
        _DECODER_REGISTRY[name] = builder
        return builder

    return decorate


def available_decoders() -> tuple[str, ...]:
    """``"auto"`` followed by every registered decoder name, in registration order."""
    return ("auto", *_DECODER_REGISTRY)


def create_decoder_parts(
    name: str,
    info: BackboneInfo,
    *,
    seg_channels: int,
    pretrained: bool,
    decoder_channels: int,
    dropout: float,
    timm_kwargs: dict[str, Any],
) -> dict[str, nn.Module]:
    """Build the registered decoder ``name`` on backbone ``info``: ``encoder``, ``decoder``, ``segmentation_head``."""
    builder = _DECODER_REGISTRY.get(name)
    if builder is None:
        raise ValueError(f"unknown decoder {name!r}; registered: {', '.join(_DECODER_REGISTRY)}")
    return builder(info, seg_channels=seg_channels, pretrained=pretrained, decoder_channels=decoder_channels,
                   dropout=dropout, timm_kwargs=timm_kwargs)


def choose_decoder(decoder: str, info: BackboneInfo) -> str:
    """The decoder to build for ``decoder`` (a registered name or ``"auto"``) on backbone ``info``.

    Hierarchical backbones take smp's ``fpn`` (``auto``) or ``unet``. Single-stride ViTs take
    ``dpt`` or ``sfp``; ``auto`` gives ``dpt`` for power-of-two patch sizes up to 32 with a learned
    position table (ViT-B/16, ViT-L/16) and ``sfp`` otherwise: DINOv2 /14, and rotary-position ViTs
    (DINOv3 /16), which run at any multiple of their patch (RoPE has no table to resize) while DPT
    would coarsen the input step to 32 (518 px → 512 either way, but 528 or 560 only with ``sfp``),
    and whose ``sfp`` head is several times smaller. A decoder that does not fit raises
    ``ValueError`` naming the ones that do.
    """
    if decoder not in available_decoders():
        raise ValueError(f"decoder must be one of {available_decoders()}, got {decoder!r}")
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
        return "dpt" if power_of_two and info.patch_size <= 32 and not info.rotary_positions else "sfp"
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


def check_decoder_width(decoder_name: str, decoder_channels: int) -> None:
    """``ValueError`` for a width the decoder cannot take (smp's FPN uses ``GroupNorm(32, C)``)."""
    if decoder_name == "fpn" and decoder_channels % 32:
        raise ValueError(
            f"decoder_channels must be a multiple of 32 for the FPN decoder (GroupNorm(32)), got {decoder_channels}"
        )


def decoder_stride(decoder_name: str, info: BackboneInfo) -> int:
    """Input height and width must be multiples of this: the deepest reduction (hierarchical), the
    patch size (``sfp``), or at least 32 for ``dpt`` (see :func:`_dpt`)."""
    if info.hierarchical:
        return max(info.reductions)
    if decoder_name == "dpt":
        return max(32, info.patch_size)
    return info.patch_size


def _smp_parts(net: nn.Module) -> dict[str, nn.Module]:
    return {"encoder": net.encoder, "decoder": net.decoder, "segmentation_head": net.segmentation_head}


def _smp_weights(pretrained: bool) -> bool | None:
    return True if pretrained else None


@register_decoder("fpn")
def _fpn(info: BackboneInfo, *, seg_channels: int, pretrained: bool, decoder_channels: int, dropout: float,
         timm_kwargs: dict[str, Any]) -> dict[str, nn.Module]:
    """smp ``FPN`` on the ``"tu-<timm name>"`` encoder (hierarchical backbones, stride 32)."""
    import segmentation_models_pytorch as smp

    net = smp.FPN(
        encoder_name=f"tu-{info.name}",
        encoder_depth=5,
        encoder_weights=_smp_weights(pretrained),
        decoder_pyramid_channels=decoder_channels,
        decoder_segmentation_channels=decoder_channels,
        decoder_merge_policy="add",
        decoder_dropout=dropout,
        classes=seg_channels,
        upsampling=4,
        aux_params=None,  # the classification head is PooledClassificationHead, added by the factory
        **timm_kwargs,
    )
    return _smp_parts(net)


@register_decoder("unet")
def _unet(info: BackboneInfo, *, seg_channels: int, pretrained: bool, decoder_channels: int, dropout: float,
          timm_kwargs: dict[str, Any]) -> dict[str, nn.Module]:
    """smp ``Unet`` with decoder widths ``(4c, 2c, c, c/2, c/4)`` (smp's default at ``c = 64``)."""
    import segmentation_models_pytorch as smp

    c = decoder_channels
    net = smp.Unet(
        encoder_name=f"tu-{info.name}",
        encoder_depth=5,
        encoder_weights=_smp_weights(pretrained),
        decoder_channels=(4 * c, 2 * c, c, max(c // 2, 1), max(c // 4, 1)),
        classes=seg_channels,
        aux_params=None,
        **timm_kwargs,
    )
    return _smp_parts(net)


@register_decoder("dpt")
def _dpt(info: BackboneInfo, *, seg_channels: int, pretrained: bool, decoder_channels: int, dropout: float,
         timm_kwargs: dict[str, Any]) -> dict[str, nn.Module]:
    """smp ``DPT`` for ViTs with a power-of-two patch size (fusion ``c``, reassemble ``(c, 2c, 4c, 4c)``).

    Its reassemble blocks use ``int(patch / 4)``-style resampling factors, which truncate for
    patch 14 (every DINOv2 size fails with a shape mismatch); even for patch 16 the 1/32 level is
    made by a stride-2 conv, so the input must be a multiple of 32 although smp's own shape check
    only asks for 16 (hence :func:`decoder_stride`). smp hard-codes ``Dropout(0.1)`` in the head
    (the factory resets it to ``dropout``) and builds a full timm classifier whose blocks after
    the last tapped one, final norm and head are unused: they are pruned here, so every backbone
    parameter receives a gradient.
    """
    import segmentation_models_pytorch as smp

    c = decoder_channels
    net = smp.DPT(
        encoder_name=f"tu-{info.name}",
        encoder_depth=4,
        encoder_weights=_smp_weights(pretrained),
        decoder_readout="cat" if info.num_prefix_tokens else "ignore",
        decoder_intermediate_channels=(c, 2 * c, 4 * c, 4 * c),
        decoder_fusion_channels=c,
        classes=seg_channels,
        aux_params=None,
        num_classes=0,
        **timm_kwargs,
    )
    net.encoder.model.prune_intermediate_layers(list(net.encoder._output_indices), prune_norm=True, prune_head=True)
    return _smp_parts(net)


@register_decoder("sfp")
def _sfp(info: BackboneInfo, *, seg_channels: int, pretrained: bool, decoder_channels: int, dropout: float,
         timm_kwargs: dict[str, Any]) -> dict[str, nn.Module]:
    """Simple feature pyramid (:class:`SimpleFeaturePyramidDecoder`) on four ViT blocks sampled
    uniformly through the network; any patch size, stride = patch size."""
    import timm
    from segmentation_models_pytorch.base import SegmentationHead
    from segmentation_models_pytorch.base import initialization as smp_init

    n = info.num_blocks
    indices = [int(n / 4 * k) - 1 for k in range(1, 5)]
    features = timm.create_model(info.name, pretrained=pretrained, features_only=True, out_indices=indices,
                                 **timm_kwargs)
    encoder = ViTFeatureEncoder(features)
    decoder = SimpleFeaturePyramidDecoder(encoder.out_channels, channels=decoder_channels, dropout=dropout)
    segmentation_head = SegmentationHead(decoder_channels, seg_channels, kernel_size=1)
    smp_init.initialize_decoder(decoder)
    smp_init.initialize_head(segmentation_head)
    return {"encoder": encoder, "decoder": decoder, "segmentation_head": segmentation_head}


DECODERS = available_decoders()
"""Valid ``decoder`` arguments: ``("auto", "fpn", "unet", "dpt", "sfp")``."""
