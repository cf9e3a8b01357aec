"""Tests of :mod:`defect_pipeline.ml.models`: every family builds, runs, trains and loads weights.

Real CPU forward/backward passes use one small model per family at tiny sizes; every claimed
backbone name (large ones included) is built and run on the meta device, which allocates
nothing. Pretrained weights are never downloaded: ``pretrained=True`` is only exercised with
timm's loader replaced by a failing stub.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from defect_pipeline.ml.labels import LabelSpace
from defect_pipeline.ml.models import (
    MultitaskNet,
    MultitaskOutput,
    check_input_size,
    count_parameters,
    create_model,
    list_backbone_families,
    load_backbone_weights,
)

pytestmark = pytest.mark.filterwarnings("ignore:.*random initialisation:UserWarning")

LABELS = LabelSpace(("crack", "inclusion", "patch"))  # 4 image classes, 4 seg classes
K_IMG = LABELS.num_image_classes
K_SEG = 3  # deliberately different from K_IMG so the two heads cannot be mixed up


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """On the small shared CI CPU, one intra-op thread is faster than two fighting for cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _build(name: str, **kwargs) -> MultitaskNet:
    kwargs.setdefault("num_image_classes", K_IMG)
    kwargs.setdefault("num_seg_classes", K_SEG)
    kwargs.setdefault("decoder_channels", 32)
    return create_model(name, **kwargs)


def _meta(name: str, **kwargs) -> MultitaskNet:
    with torch.device("meta"):
        return _build(name, **kwargs)


def _head_dropouts(model: MultitaskNet) -> list[nn.Module]:
    in_backbone = {id(m) for m in model.backbone.modules()}
    return [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and id(m) not in in_backbone]


# ------------------------------------------------------------------ real CPU forward + backward

FAMILY_CASES = [
    # (timm name, decoder argument, input size, expected decoder, expected stride, create kwargs)
    ("resnet18", "auto", 64, "fpn", 32, {}),
    ("efficientnet_b0", "auto", 64, "fpn", 32, {}),
    ("convnext_atto", "auto", 64, "fpn", 32, {}),
    ("resnet18", "unet", 64, "unet", 32, {}),
    ("swin_tiny_patch4_window7_224", "auto", 64, "fpn", 32, {}),
    ("vit_tiny_patch16_224", "auto", 64, "dpt", 32, {"image_size": 64}),
    ("vit_small_patch14_dinov2", "auto", 56, "sfp", 14, {"image_size": 56}),
    ("vit_small_patch16_dinov3", "auto", 48, "sfp", 16, {"image_size": 48}),  # RoPE ViT: sfp, stride = patch
]


@pytest.mark.parametrize(
    ("name", "decoder", "size", "decoder_name", "stride", "kwargs"),
    FAMILY_CASES,
    ids=[f"{c[0]}-{c[3]}" for c in FAMILY_CASES],
)
def test_forward_backward_on_cpu(name, decoder, size, decoder_name, stride, kwargs) -> None:
    torch.manual_seed(0)
    model = _build(name, decoder=decoder, dropout=0.1, **kwargs)
    assert (model.decoder_name, model.stride, model.backbone_name) == (decoder_name, stride, name)
    model.train()
    x = torch.randn(2, 3, size, size)
    out = model(x)
    assert isinstance(out, MultitaskOutput)
    assert out.seg_logits.shape == (2, K_SEG, size, size)
    assert out.cls_logits.shape == (2, K_IMG)
    target = torch.randint(0, K_SEG, (2, size, size))
    loss = nn.functional.cross_entropy(out.seg_logits, target) + nn.functional.cross_entropy(
        out.cls_logits, torch.tensor([0, 1])
    )
    loss.backward()
    assert torch.isfinite(loss)
    for pname, param in model.named_parameters():
        assert param.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{pname} has a non-finite gradient"


# ------------------------------------------------------------------ every claimed name, on meta

ALL_NAMES = [(family, name) for family, names in list_backbone_families().items() for name in names]
EXPECTED_DECODER = {
    "resnet": "fpn", "efficientnet": "fpn", "convnext": "fpn", "swin": "fpn", "vit": "dpt", "dinov2": "sfp",
    "dinov3": "sfp",
}  # fmt: skip


def test_families_cover_the_claimed_backbones() -> None:
    families = list_backbone_families()
    assert set(families) == set(EXPECTED_DECODER)
    claimed = {name for names in families.values() for name in names}
    required = {
        "resnet18", "resnet50", "efficientnet_b0",
        "convnext_atto", "convnext_tiny", "convnext_small", "convnext_base", "convnext_large",
        "swin_tiny_patch4_window7_224", "swin_small_patch4_window7_224",
        "swin_base_patch4_window7_224", "swin_large_patch4_window7_224",
        "vit_base_patch16_224", "vit_large_patch16_224",
        "vit_small_patch14_dinov2", "vit_base_patch14_dinov2", "vit_large_patch14_dinov2", "vit_giant_patch14_dinov2",
        "vit_small_patch16_dinov3", "vit_base_patch16_dinov3", "vit_large_patch16_dinov3",
    }  # fmt: skip
    assert required <= claimed
    families["resnet"].append("mutated")
    assert "mutated" not in list_backbone_families()["resnet"]


@pytest.mark.parametrize(("family", "name"), ALL_NAMES, ids=[n for _, n in ALL_NAMES])
def test_every_claimed_backbone_builds_and_runs_on_meta(family, name) -> None:
    model = _meta(name, decoder_channels=64)
    assert model.decoder_name == EXPECTED_DECODER[family]
    assert model.hierarchical == (family not in ("vit", "dinov2", "dinov3"))
    assert all(p.is_meta for p in model.parameters())
    size = 2 * model.stride
    out = model(torch.empty(2, 3, size, size, device="meta"))
    assert out.seg_logits.shape == (2, K_SEG, size, size)
    assert out.cls_logits.shape == (2, K_IMG)
    counts = count_parameters(model)
    assert counts["backbone"] > 1_000_000 and counts["head"] > 0


@pytest.mark.parametrize(
    ("name", "decoder", "size", "stride"),
    [
        ("convnext_atto", "unet", 96, 32),  # transformer-style (1/4 first) encoder in smp's Unet
        ("swin_tiny_patch4_window7_224", "unet", 96, 32),
        ("vit_base_patch16_224", "sfp", 48, 16),  # sfp: stride = patch size, odd patch grids fine
        ("vit_base_patch16_224", "dpt", 96, 32),  # DPT needs an even patch grid
        ("vit_base_patch14_dinov2", "sfp", 98, 14),
        ("vit_base_patch16_dinov3", "dpt", 96, 32),  # DPT on DINOv3 when asked for: stride 32
        ("vit_large_patch16_dinov3", "sfp", 80, 16),  # sfp: any multiple of 16 (an odd 5x5 patch grid)
    ],
)
def test_other_decoders_and_sizes_on_meta(name, decoder, size, stride) -> None:
    model = _meta(name, decoder=decoder)
    assert (model.decoder_name, model.stride) == (decoder, stride)
    out = model(torch.empty(2, 3, size, size + stride, device="meta"))
    assert out.seg_logits.shape == (2, K_SEG, size, size + stride)
    assert out.cls_logits.shape == (2, K_IMG)


# ------------------------------------------------------------------ freezing, dropout, modes


def test_frozen_backbone_does_not_change_while_head_trains() -> None:
    torch.manual_seed(0)
    model = _build("resnet18", dropout=0.2)
    model.freeze_backbone()
    model.train()
    assert model.training and model.backbone_frozen
    assert not model.backbone.training
    assert all(not m.training for m in model.backbone.modules())
    assert model.decoder.training and model.classification_head.training
    assert all(not p.requires_grad for p in model.backbone.parameters())

    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}  # incl. BN running stats
    head_before = [p.detach().clone() for p in model.head_parameters()]
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        out = model(torch.randn(2, 3, 64, 64))
        loss = out.seg_logits.square().mean() + out.cls_logits.square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, backbone_before[key]), f"frozen backbone tensor {key} changed"
    assert any(not torch.equal(p, b) for p, b in zip(model.head_parameters(), head_before))
    counts = count_parameters(model)
    assert counts["frozen"] == counts["backbone"] and counts["trainable"] == counts["head"]

    model.freeze_backbone(False)
    assert model.backbone.training and not model.backbone_frozen
    assert all(p.requires_grad for p in model.parameters())
    model.eval()
    assert not model.backbone.training


def test_set_dropout_changes_every_head_dropout_layer() -> None:
    for name in ("convnext_atto", "vit_tiny_patch16_224", "vit_small_patch14_dinov2", "vit_small_patch16_dinov3"):
        model = _meta(name, dropout=0.2)
        dropouts = _head_dropouts(model)
        assert len(dropouts) >= 2, name  # decoder + classification head
        assert all(d.p == 0.2 for d in dropouts), name  # DPT's hard-coded 0.1 is overridden too
        backbone_p = [m.p for m in model.backbone.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
        model.set_dropout(0.35)
        assert all(d.p == 0.35 for d in _head_dropouts(model)), name
        assert [m.p for m in model.backbone.modules() if isinstance(m, nn.modules.dropout._DropoutNd)] == backbone_p
    # the classification head keeps a Dropout even when built with dropout=0 (smp would use Identity)
    model = _meta("resnet18", dropout=0.0)
    assert isinstance(model.classification_head.dropout, nn.Dropout)
    model.set_dropout(0.5)
    assert model.classification_head.dropout.p == 0.5
    with pytest.raises(ValueError, match="dropout"):
        model.set_dropout(1.5)


def test_binary_mode_gives_one_channel() -> None:
    for name in ("resnet18", "vit_small_patch14_dinov2"):
        model = _meta(name, seg_mode="binary")
        size = 2 * model.stride
        out = model(torch.empty(3, 3, size, size, device="meta"))
        assert out.seg_logits.shape == (3, 1, size, size)
        assert out.cls_logits.shape == (3, K_IMG)
    with pytest.raises(ValueError, match="seg_mode"):
        _meta("resnet18", seg_mode="multilabel")


def test_label_space_sizes_flow_through() -> None:
    model = _meta("convnext_atto", num_image_classes=LABELS.num_image_classes, num_seg_classes=LABELS.num_seg_classes)
    out = model(torch.empty(1, 3, 64, 64, device="meta"))
    assert out.seg_logits.shape[1] == LABELS.num_seg_classes == 4
    assert out.cls_logits.shape[1] == LABELS.num_image_classes == 4


# ------------------------------------------------------------------ argument errors


def test_bad_image_size_is_a_clear_value_error() -> None:
    message = r"image size 100 is not a multiple of the model stride 32 for resnet18; use 96 or 128"
    with pytest.raises(ValueError, match=message):
        _meta("resnet18", image_size=100)
    with pytest.raises(ValueError, match=r"stride 32 .*; use 64$"):
        check_input_size(32, 20)
    with pytest.raises(ValueError, match=r"image size 32 gives a 1x1 deepest feature map .*; use at least 64"):
        check_input_size(32, 32)
    dinov2 = _meta("vit_small_patch14_dinov2")
    check_input_size(dinov2, 70)
    message = r"image size 60 is not a multiple of the model stride 14 for vit_small_patch14_dinov2; use 56 or 70"
    with pytest.raises(ValueError, match=message):
        check_input_size(dinov2, 60)
    resnet = _meta("resnet18")
    with pytest.raises(ValueError, match="image size 80 is not a multiple of the model stride 32"):
        resnet(torch.empty(1, 3, 64, 80, device="meta"))


def test_unknown_backbone_suggests_close_timm_names() -> None:
    with pytest.raises(ValueError, match="unknown backbone 'convnext_tinny'.*convnext_tiny"):
        create_model("convnext_tinny", num_image_classes=2, num_seg_classes=2)
    with pytest.raises(ValueError, match="vit_base_patch14_dinov2"):
        create_model("dinov2_vitb14", num_image_classes=2, num_seg_classes=2)


def test_decoder_must_fit_the_backbone_kind() -> None:
    with pytest.raises(ValueError, match="single stride"):
        _meta("vit_tiny_patch16_224", decoder="fpn")
    with pytest.raises(ValueError, match="power-of-two patch.*sfp"):
        _meta("vit_small_patch14_dinov2", decoder="dpt")
    with pytest.raises(ValueError, match="hierarchical"):
        _meta("resnet18", decoder="dpt")
    with pytest.raises(ValueError, match="decoder must be one of"):
        _meta("resnet18", decoder="deeplab")
    assert _meta("resnet18", decoder="unet").decoder_name == "unet"
    with pytest.raises(ValueError, match="multiple of 32"):
        _meta("resnet18", decoder_channels=48)


def test_decoders_come_from_the_registry() -> None:
    from defect_pipeline.ml.models import DECODERS
    from defect_pipeline.ml.models.decoders import available_decoders, create_decoder_parts, register_decoder

    assert DECODERS == available_decoders() == ("auto", "fpn", "unet", "dpt", "sfp")
    with pytest.raises(ValueError, match="already registered"):
        register_decoder("fpn")(lambda *args, **kwargs: {})
    with pytest.raises(ValueError, match="reserved"):
        register_decoder("auto")(lambda *args, **kwargs: {})
    with pytest.raises(ValueError, match="unknown decoder 'deeplab'.*fpn, unet, dpt, sfp"):
        create_decoder_parts("deeplab", None, seg_channels=2, pretrained=False, decoder_channels=32, dropout=0.0,
                             timm_kwargs={})


def test_random_initialisation_warns() -> None:
    with pytest.warns(UserWarning, match="random initialisation"):
        with torch.device("meta"):
            create_model("resnet18", num_image_classes=2, num_seg_classes=2)


def test_pretrained_passes_to_timm_and_offline_failure_points_to_checkpoint_path(monkeypatch) -> None:
    import timm.models._builder as timm_builder

    calls = []

    def offline(*args, **kwargs):
        calls.append(kwargs.get("pretrained_cfg"))
        raise OSError("no network (test stub)")

    monkeypatch.setattr(timm_builder, "load_pretrained", offline)
    with pytest.raises(RuntimeError, match="checkpoint_path") as excinfo:
        _meta("resnet18", pretrained=True)
    assert calls, "pretrained=True did not reach timm's weight loader"
    assert isinstance(excinfo.value.__cause__, OSError)
    with pytest.raises(ValueError, match="not both"):
        _meta("resnet18", pretrained=True, checkpoint_path="x.pt")


# ------------------------------------------------------------------ weights


@pytest.fixture(scope="module")
def atto_pair() -> tuple[MultitaskNet, MultitaskNet]:
    torch.manual_seed(1)
    source = _build("convnext_atto")
    torch.manual_seed(2)
    target = _build("convnext_atto")
    return source, target


def _assert_same_backbone(a: MultitaskNet, b: MultitaskNet) -> None:
    sa, sb = a.backbone.state_dict(), b.backbone.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_load_backbone_weights_round_trips(tmp_path: Path, atto_pair) -> None:
    from safetensors.torch import save_file

    source, _ = atto_pair
    state = {k: v.contiguous() for k, v in source.backbone.state_dict().items()}

    st_path = tmp_path / "backbone.safetensors"
    save_file(state, str(st_path))
    torch.manual_seed(3)
    fresh = _build("convnext_atto")
    result = load_backbone_weights(fresh, str(st_path))
    assert result == {"loaded": len(state), "missing": [], "unexpected": []}
    _assert_same_backbone(source, fresh)

    # a wrapped torch file with DDP / wrapper prefixes
    pt_path = tmp_path / "backbone.pt"
    torch.save({"state_dict": {f"module.backbone.{k}": v for k, v in state.items()}}, pt_path)
    torch.manual_seed(4)
    fresh = _build("convnext_atto")
    assert load_backbone_weights(fresh, str(pt_path))["loaded"] == len(state)
    _assert_same_backbone(source, fresh)

    # the whole multitask state dict: backbone keys load, decoder/head keys are reported unexpected
    full_path = tmp_path / "full.pth"
    torch.save(source.state_dict(), full_path)
    torch.manual_seed(5)
    fresh = _build("convnext_atto")
    result = load_backbone_weights(fresh, str(full_path))
    assert result["loaded"] == len(state) and not result["missing"]
    assert result["unexpected"] and all(not k.startswith("encoder.") for k in result["unexpected"])
    _assert_same_backbone(source, fresh)

    # create_model(checkpoint_path=...) loads and does not warn about random initialisation
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = create_model("convnext_atto", num_image_classes=2, num_seg_classes=2, decoder_channels=32,
                              checkpoint_path=str(st_path))  # fmt: skip
    _assert_same_backbone(source, loaded)


def test_load_timm_classifier_checkpoint_into_feature_extractor(tmp_path: Path, atto_pair) -> None:
    import timm

    _, target = atto_pair
    torch.manual_seed(6)
    classifier = timm.create_model("convnext_atto", pretrained=False)
    path = tmp_path / "convnext_atto.pth"
    torch.save(classifier.state_dict(), path)
    result = load_backbone_weights(target, str(path))
    assert result["missing"] == []
    assert result["loaded"] == len(target.backbone.state_dict())
    assert "head.fc.weight" in result["unexpected"]
    # timm's feature extractor calls "stages.0" "stages_0"
    assert torch.equal(
        target.backbone.state_dict()["stages_0.blocks.0.conv_dw.weight"],
        classifier.state_dict()["stages.0.blocks.0.conv_dw.weight"],
    )


def test_load_vit_checkpoint_for_another_image_size_resamples_pos_embed(tmp_path: Path) -> None:
    import timm

    classifier = timm.create_model("vit_tiny_patch16_224", pretrained=False)  # 14 x 14 grid
    path = tmp_path / "vit.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in classifier.state_dict().items()}, str(path))
    model = _build("vit_tiny_patch16_224", decoder="sfp", image_size=64)  # 4 x 4 grid
    result = load_backbone_weights(model, str(path))
    assert result["missing"] == []
    state = model.backbone.state_dict()
    assert state["model.pos_embed"].shape == (1, 1 + 16, 192)
    assert torch.equal(state["model.blocks.3.attn.qkv.weight"], classifier.state_dict()["blocks.3.attn.qkv.weight"])


def test_dinov3_is_a_rotary_vit_whose_local_timm_checkpoint_loads(tmp_path: Path) -> None:
    """DINOv3 is found to use rotary positions (so ``auto`` gives ``sfp`` at stride 16, where DPT would ask
    for multiples of 32); a timm classifier state dict saved locally (the ``checkpoint_path`` route) loads
    into its feature extractor with nothing missing, at another image size than timm's default."""
    import timm
    from safetensors.torch import save_file

    from defect_pipeline.ml.models.backbones import probe_backbone

    assert probe_backbone("vit_small_patch16_dinov3").rotary_positions
    assert not probe_backbone("vit_small_patch14_dinov2").rotary_positions
    assert not probe_backbone("vit_tiny_patch16_224").rotary_positions
    torch.manual_seed(7)
    classifier = timm.create_model("vit_small_patch16_dinov3", pretrained=False)
    path = tmp_path / "dinov3_s.safetensors"
    save_file({k: v.contiguous() for k, v in classifier.state_dict().items()}, str(path))
    model = _build("vit_small_patch16_dinov3", image_size=64, checkpoint_path=str(path))
    assert (model.decoder_name, model.stride) == ("sfp", 16)
    state = model.backbone.state_dict()
    assert torch.equal(state["model.blocks.5.attn.qkv.weight"], classifier.state_dict()["blocks.5.attn.qkv.weight"])
    assert torch.equal(state["model.reg_token"], classifier.state_dict()["reg_token"])


def test_load_backbone_weights_is_strict_about_shapes_and_matches(tmp_path: Path, atto_pair) -> None:
    source, target = atto_pair
    state = dict(source.backbone.state_dict())
    state["stem_0.weight"] = torch.zeros(3, 3, 3, 3)
    bad_shape = tmp_path / "bad_shape.pt"
    torch.save(state, bad_shape)
    with pytest.raises(ValueError, match=r"bad_shape\.pt.*stem_0\.weight: \(3, 3, 3, 3\) in file"):
        load_backbone_weights(target, str(bad_shape))

    unrelated = tmp_path / "unrelated.safetensors"
    from safetensors.torch import save_file

    save_file({"something.else": torch.zeros(2)}, str(unrelated))
    with pytest.raises(ValueError, match=r"unrelated\.safetensors.*none of"):
        load_backbone_weights(target, str(unrelated))



def _side_effect(path: str) -> dict:
    Path(path).write_text("code ran while loading the checkpoint")
    return {}


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (_side_effect, (str(self.marker),))


def test_load_backbone_weights_refuses_pickled_objects(tmp_path: Path, atto_pair) -> None:
    _, target = atto_pair
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pt"
    torch.save({"x": _Exploit(marker), "stem.0.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match=r"evil\.pt.*weights_only"):
        load_backbone_weights(target, str(path))
    assert not marker.exists()
    # the file really is malicious: an unrestricted load runs its code
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_count_parameters_adds_up() -> None:
    model = _meta("vit_small_patch14_dinov2")
    counts = count_parameters(model)
    assert counts["total"] == counts["backbone"] + counts["head"] == counts["trainable"] + counts["frozen"]
    assert counts["backbone"] == sum(p.numel() for p in model.backbone.parameters())
    assert counts["head"] == sum(p.numel() for p in model.head_parameters())
    assert counts["frozen"] == 0
    model.freeze_backbone()
    assert count_parameters(model)["frozen"] == counts["backbone"]
