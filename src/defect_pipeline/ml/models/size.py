"""How big a model is: parameter counts of a built network (:func:`count_parameters`) and the lower
bound on the memory its training state needs (:func:`training_memory_estimate`), computed from a
model built on the meta device so nothing is allocated or downloaded; used to refuse hopeless
backbone choices before a stage starts.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from defect_pipeline.ml.models.factory import create_model


def count_parameters(model: nn.Module) -> dict:
    """Parameter counts: ``total``, ``trainable``, ``frozen``, ``backbone`` and ``head`` (= total - backbone),
    and ``adapters`` (LoRA, inside the backbone) when the model has any."""
    params = list(model.parameters())
    adapters = sum(p.numel() for name, p in model.named_parameters() if "lora_" in name)
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
        **({"adapters": adapters} if adapters else {}),
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
