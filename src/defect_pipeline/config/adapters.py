"""Block ``stageN.adapter``: parameter-efficient fine-tuning of a ViT backbone with LoRA adapters."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from defect_pipeline.config.base import StrictModel


class AdapterParams(StrictModel):
    """``type: lora`` trains low-rank adapters on the backbone's linear layers instead of its weights (which stay
    frozen), plus the decoder and heads; the packaged model has them merged (docs/training.md, "LoRA")."""

    type: Literal["none", "lora"] = "none"
    rank: int = Field(8, ge=1, description="r: the adapters' rank")
    alpha: float = Field(16.0, gt=0.0, description="scaling alpha / r of the adapter's update")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the adapters' input")
    target_modules: list[str] = Field(["qkv", "proj", "fc1", "fc2"], min_length=1,
                                      description="names of the backbone's linear layers that get adapters "
                                                  "(timm ViT blocks: qkv, proj, fc1, fc2)")
