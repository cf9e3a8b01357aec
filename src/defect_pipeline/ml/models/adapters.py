"""LoRA adapters on the backbone of a single-stride ViT (DINOv2/v3, ViT), through Hugging Face ``peft``.

:func:`add_lora` injects ``peft`` LoRA layers (``inject_adapter_in_model``, no ``PeftModel`` wrapper, so
the network keeps its class and its state-dict keys stay readable) into the linear layers of the timm
backbone named by ``target_modules`` (timm ViT blocks: ``qkv``, ``proj``, ``fc1``, ``fc2``). The
backbone's own weights are frozen for good; the adapters and the decoder and heads train
(:meth:`~defect_pipeline.ml.models.net.MultitaskNet.freeze_backbone` then freezes or unfreezes the
adapters only). :func:`merge_lora` folds every adapter into its base weight (``W + (alpha / r) B A``)
and puts the plain ``nn.Linear`` back, so a merged network has no adapter module and needs no
``peft`` to run, export or serve. :func:`lora_counts` says what trains.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

LORA_MARKER = "lora_"
VIT_TARGETS = ("qkv", "proj", "fc1", "fc2")


@dataclass(frozen=True)
class LoraSpec:
    """The adapter of a stage: rank ``r``, scaling ``alpha / r``, dropout on the adapter input, target layers."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = field(default=VIT_TARGETS)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "lora", **asdict(self), "target_modules": list(self.target_modules)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LoraSpec:
        """From :meth:`to_dict` or a ``stageN.adapter`` block (``type`` must be ``lora``)."""
        if values.get("type", "lora") != "lora":
            raise ValueError(f"not a LoRA adapter: {values}")
        return cls(rank=int(values["rank"]), alpha=float(values["alpha"]), dropout=float(values["dropout"]),
                   target_modules=tuple(values["target_modules"]))


def add_lora(model: nn.Module, spec: LoraSpec) -> int:
    """Inject LoRA adapters into ``model.backbone`` (a :class:`MultitaskNet` on a ViT); returns the adapter parameters.

    Raises ``ValueError`` for a hierarchical backbone, a model that has adapters already, or target
    names that match no linear layer of the backbone (naming the linear layer names it has).
    """
    from peft import LoraConfig, inject_adapter_in_model

    if getattr(model, "hierarchical", True):
        raise ValueError(f"LoRA adapters are for single-stride ViT backbones (DINOv2/v3, ViT); "
                         f"{getattr(model, 'backbone_name', 'this model')} is hierarchical: leave stageN.adapter.type "
                         "at none")
    if has_adapters(model):
        raise ValueError("the model has LoRA adapters already")
    if spec.rank < 1:
        raise ValueError(f"adapter.rank must be >= 1, got {spec.rank}")
    linear_names = sorted({name.rsplit(".", 1)[-1] for name, m in model.backbone.named_modules()
                           if isinstance(m, nn.Linear)})
    unknown = [t for t in spec.target_modules if t not in linear_names]
    if unknown:
        raise ValueError(f"adapter.target_modules {unknown} name no linear layer of {model.backbone_name}; "
                         f"its linear layers are called {linear_names}")
    if "qkv" in spec.target_modules and any(getattr(m, "q_bias", None) is not None
                                            and not getattr(m, "qkv_bias_separate", True)
                                            for m in model.backbone.modules()):
        # timm's EVA attention with q/v biases calls F.linear(x, self.qkv.weight, bias): an adapter there never runs
        raise ValueError(f"{model.backbone_name}'s attention uses qkv.weight directly (separate q/v biases, e.g. "
                         "the *_qkvb DINOv3 variants), so a LoRA on qkv would be ignored: leave qkv out of "
                         "adapter.target_modules")
    # full names of the linear layers only: "proj" would also match the patch embedding's Conv2d
    targets = [name for name, m in model.backbone.named_modules()
               if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in spec.target_modules]
    config = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=targets,
                        bias="none")
    inject_adapter_in_model(config, model.backbone)
    model.lora = spec
    frozen = getattr(model, "backbone_frozen", False)
    model.freeze_backbone(frozen)  # base weights frozen for good; adapters follow the backbone's state
    return sum(p.numel() for name, p in model.backbone.named_parameters() if LORA_MARKER in name)


def has_adapters(model: nn.Module) -> bool:
    """Whether any LoRA layer is (still) in ``model``."""
    return any(LORA_MARKER in name for name, _ in model.named_parameters())


def is_adapter_parameter(name: str) -> bool:
    return LORA_MARKER in name


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA adapter of ``model`` into its base layer and put the base layer back (in place)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [(name, module) for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)]
    for name, module in layers:
        module.merge(safe_merge=True)  # raises on NaN/inf instead of writing them into the weights
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.get_base_layer())
    if hasattr(model, "lora"):
        del model.lora
    return model


def lora_counts(model: nn.Module) -> dict[str, int]:
    """Parameter counts: adapters, heads (outside the backbone), trainable and frozen."""
    backbone_ids = {id(p) for p in model.backbone.parameters()}
    adapters = sum(p.numel() for name, p in model.named_parameters() if LORA_MARKER in name)
    heads = sum(p.numel() for p in model.parameters() if id(p) not in backbone_ids)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"adapters": adapters, "heads": heads, "trainable": trainable, "frozen": total - trainable}
