"""Loading a local checkpoint into a :class:`~defect_pipeline.ml.models.net.MultitaskNet`'s backbone:
state-dict surgery that unwraps checkpoint containers (``{"state_dict": ...}``, ``{"model": ...}``),
strips wrapper prefixes (DDP, ``torch.compile``, Lightning, smp), matches plain timm classifier keys to
the feature extractor's, resamples a ViT position embedding to another image size, and refuses any
other shape mismatch. Files are read weights-only (safetensors or ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from defect_pipeline.ml.models.net import MultitaskNet

# Prefixes that wrappers put in front of backbone keys (DDP, torch.compile, Lightning, smp, ...).
_KEY_PREFIXES = ("module.", "_orig_mod.", "model.", "backbone.", "encoder.model.", "encoder.")
# Checkpoint containers that hold the actual state dict one level down.
_NESTED_STATE_KEYS = ("state_dict", "model", "model_state_dict", "module", "backbone", "teacher")


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
