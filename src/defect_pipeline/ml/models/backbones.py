"""What a timm backbone is, learned from the model itself and never from its name: a backbone name is
resolved against timm (unknown names get close suggestions) and probed on the meta device with
``features_only=True`` (no memory, no download), whose ``feature_info.reduction()`` says whether it is
hierarchical (reductions grow, e.g. ResNet ``2..32``, ConvNeXt / Swin ``4..32``) or a single-stride
ViT (all reductions equal to the patch size), and whether a ViT encodes positions with rotary embeddings
(DINOv3) instead of a learned table. Also the backbone families the package is tested with.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

import torch

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
    "dinov3": ["vit_small_patch16_dinov3", "vit_base_patch16_dinov3", "vit_large_patch16_dinov3"],
}


@dataclass(frozen=True)
class BackboneInfo:
    """The shape of a timm feature extractor, as :func:`probe_backbone` found it."""

    name: str
    reductions: tuple[int, ...]
    channels: tuple[int, ...]
    dynamic_img_size: bool  # accepts timm's dynamic_img_size
    num_blocks: int  # ViTs: number of transformer blocks
    num_prefix_tokens: int  # ViTs: cls/register tokens
    rotary_positions: bool = False  # ViTs: rotary position embedding (RoPE, e.g. DINOv3), no learned table

    @property
    def hierarchical(self) -> bool:
        return len(set(self.reductions)) > 1

    @property
    def patch_size(self) -> int:
        return self.reductions[0]


def list_backbone_families() -> dict[str, list[str]]:
    """Family name → the timm model names this package is tested with (meta-device build + forward)."""
    return {family: list(names) for family, names in _BACKBONE_FAMILIES.items()}


def resolve_backbone_name(backbone: str) -> str:
    """The timm model name for ``backbone`` (``"tu-"`` stripped); ``ValueError`` with close names if unknown."""
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


def probe_backbone(name: str) -> BackboneInfo:
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
    return BackboneInfo(
        name=name,
        reductions=tuple(probe.feature_info.reduction()),
        channels=tuple(probe.feature_info.channels()),
        dynamic_img_size=dynamic,
        num_blocks=len(inner_info) if isinstance(inner_info, list) else len(probe.feature_info),
        num_prefix_tokens=int(getattr(inner, "num_prefix_tokens", 0) or 0),
        rotary_positions=getattr(inner, "rope", None) is not None,
    )


def backbone_data_config(backbone: str) -> dict:
    """timm's data config of ``backbone`` (``mean``, ``std``, ``interpolation``, ...), from
    :func:`timm.data.resolve_model_data_config` on a meta-device build (no memory, no download).

    The pretrained tag decides it (``vit_base_patch16_224.augreg_in21k``: mean/std 0.5, bicubic).
    """
    import timm
    from timm.data import resolve_model_data_config

    name = resolve_backbone_name(backbone)
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, features_only=True)
    return dict(resolve_model_data_config(model))
