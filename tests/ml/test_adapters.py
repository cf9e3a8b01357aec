"""LoRA adapters (:mod:`defect_pipeline.ml.models.adapters`, through peft) on a ViT backbone.

Before issue 17 there was no adapter module; ``freeze_backbone(False)`` also unfroze every backbone
weight, so an "adapter" run would have trained the whole ViT (the first test checks it does not).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from defect_pipeline.ml.engine.start import build_optimizer
from defect_pipeline.ml.models import create_model
from defect_pipeline.ml.models.adapters import LoraSpec, add_lora, has_adapters, lora_counts, merge_lora

pytestmark = pytest.mark.filterwarnings("ignore:.*random initialisation:UserWarning")


def _vit(seed: int = 0):
    torch.manual_seed(seed)
    return create_model("vit_small_patch16_dinov3", num_image_classes=3, num_seg_classes=3, decoder_channels=32,
                        image_size=32)


def test_with_an_unfrozen_backbone_only_adapters_and_heads_train() -> None:
    model = _vit()
    adapters = add_lora(model, LoraSpec(rank=4, alpha=8.0))
    model.freeze_backbone(False)  # the stage's "unfrozen backbone"
    counts = lora_counts(model)
    # 12 blocks x (qkv 384->1152, proj 384->384, fc1 384->1536, fc2 1536->384), each r * (in + out)
    expected = 12 * 4 * ((384 + 1152) + (384 + 384) + (384 + 1536) + (1536 + 384))
    assert adapters == counts["adapters"] == expected
    assert counts["trainable"] == counts["adapters"] + counts["heads"]
    loss_fn = nn.Identity()
    optimizer = build_optimizer(model, loss_fn, lr=1e-3, backbone_lr=1e-4, weight_decay=0.01, freeze_backbone=False)
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    names = {name for name, p in model.named_parameters() if id(p) in held}
    assert sum(p.numel() for name, p in model.named_parameters() if name in names) == expected + counts["heads"]
    assert all("lora_" in n for n in names if n.startswith("encoder."))
    model.freeze_backbone(True)  # a frozen backbone freezes its adapters too
    assert lora_counts(model)["trainable"] == counts["heads"]


def test_merged_model_has_no_adapters_and_predicts_like_the_unmerged_one() -> None:
    model = _vit()
    add_lora(model, LoraSpec(rank=4, alpha=8.0, dropout=0.1))
    model.freeze_backbone(False)
    with torch.no_grad():  # a trained adapter: B is zero at initialisation, which would make merging trivial
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.02)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
    merge_lora(model)
    assert not has_adapters(model)
    assert not any("lora" in type(m).__name__.lower() or "peft" in type(m).__module__ for m in model.modules())
    with torch.no_grad():
        after = model(x)
    assert torch.allclose(before.seg_logits, after.seg_logits, atol=1e-4)
    assert torch.allclose(before.cls_logits, after.cls_logits, atol=1e-4)
    plain = _vit(seed=1)  # the merged weights load into a network built without peft: what the package rebuilds
    plain.load_state_dict(model.state_dict())
    plain.eval()
    with torch.no_grad():
        assert torch.allclose(plain(x).seg_logits, before.seg_logits, atol=1e-4)
    untouched = _vit()
    assert not torch.equal(untouched.state_dict()["encoder.model.model.blocks.0.attn.qkv.weight"],
                           model.state_dict()["encoder.model.model.blocks.0.attn.qkv.weight"])


def test_lora_refuses_hierarchical_backbones_and_unknown_targets() -> None:
    with torch.device("meta"):
        cnn = create_model("resnet18", num_image_classes=2, num_seg_classes=2)
    with pytest.raises(ValueError, match="single-stride ViT.*resnet18 is hierarchical"):
        add_lora(cnn, LoraSpec())
    with pytest.raises(ValueError, match=r"\['query'\] name no linear layer.*'qkv'"):
        add_lora(_vit(), LoraSpec(target_modules=("qkv", "query")))
    with torch.device("meta"):  # EVA attention with q/v biases bypasses qkv's forward: refused, not ignored
        qkvb = create_model("vit_small_patch16_dinov3_qkvb", num_image_classes=2, num_seg_classes=2)
    with pytest.raises(ValueError, match="a LoRA on qkv would be ignored"):
        add_lora(qkvb, LoraSpec())


def test_resuming_with_another_adapter_is_refused_naming_the_setting(tmp_path) -> None:
    """A ``last.pt`` trained with other LoRA settings (or none) than the stage now asks for. Before, its adapter keys
    met the new network in ``load_state_dict`` — on every rank — as a wall of missing/unexpected keys or shape
    mismatches; or, with the same shapes but another alpha, loaded silently into a differently scaled adapter."""
    from defect_pipeline.ml.checkpoint import CheckpointError, CheckpointStore
    from defect_pipeline.ml.engine.start import load_last

    store = CheckpointStore(str(tmp_path))
    arch = {"backbone": "vit_small_patch16_dinov3", "decoder": "sfp", "seg_mode": "multiclass"}
    lora = LoraSpec(rank=4, alpha=8.0).to_dict()
    store.save("last", {"model_meta": {**arch, "adapter": lora}, "labels": {"defect_classes": ["a"]}, "model": {}})
    same = {"stage": "stage2", "labels": {"defect_classes": ["a"]}, "model_meta": {**arch, "adapter": lora}}
    assert load_last(store, same)["model_meta"]["adapter"] == lora
    with pytest.raises(CheckpointError, match=r"LoRA rank 4, alpha 8.*stage2.adapter asks for LoRA rank 4, alpha 16"
                                              r".*stage2.resume: false"):
        load_last(store, {**same, "model_meta": {**arch, "adapter": LoraSpec(rank=4, alpha=16.0).to_dict()}})
    with pytest.raises(CheckpointError, match="asks for no adapter"):
        load_last(store, {**same, "model_meta": arch})
