"""A new network's starting weights: a full checkpoint of the same architecture (checked compatible) or
backbone weights only, with the LoRA adapters a checkpoint was trained with restored into it — merged
into the weights unless the stage keeps training the same adapters — and this stage's adapters added.
"""

from __future__ import annotations

from typing import Any

from defect_pipeline.ml.checkpoint import check_compatible
from defect_pipeline.ml.models.adapters import LoraSpec, add_lora, has_adapters, merge_lora
from defect_pipeline.ml.models.net import MultitaskNet
from defect_pipeline.ml.models.weights import load_backbone_state


def load_starting_weights(net: MultitaskNet, init_state: dict | None, model_meta: dict[str, Any], *,
                          labels: dict[str, Any], source: str, adapter: LoraSpec | None = None) -> None:
    """Load ``init_state`` into ``net`` (in place) and record this stage's ``adapter`` in ``model_meta``.

    ``init_state``: None (keep the fresh weights), a checkpoint (``model`` key: checked against
    ``model_meta``'s backbone/decoder/seg_mode and ``labels``) or a backbone state dict. ``source`` names
    where it came from in error messages.
    """
    saved = (init_state or {}).get("model_meta", {}).get("adapter")
    if saved:
        add_lora(net, LoraSpec.from_dict(saved))
    if init_state is not None:
        if "model" in init_state:
            check_compatible(init_state, **{k: model_meta[k] for k in ("backbone", "decoder", "seg_mode")},
                             labels=labels, source=source)
            net.load_state_dict(init_state["model"])
        else:
            load_backbone_state(net, init_state, source=source)
    if saved and (adapter is None or adapter.to_dict() != saved):
        merge_lora(net)
    if adapter is not None:
        if not has_adapters(net):
            add_lora(net, adapter)
        model_meta["adapter"] = adapter.to_dict()
