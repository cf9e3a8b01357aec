"""Training throughput settings: channels_last, torch.compile with its fallback, fused AdamW.

Against the code before issue 16 these fail: ``trainer.channels_last``/``trainer.compile`` were unknown keys,
:mod:`defect_pipeline.ml.speed` did not exist, and ``build_trainables`` left the model in the default memory
format with an unfused AdamW on every device.
"""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from defect_pipeline.config import ParameterError, validate_parameters
from defect_pipeline.ml.batch import Batch
from defect_pipeline.ml.distributed import resolve_trainer
from defect_pipeline.ml.engine.interface import EngineConfig
from defect_pipeline.ml.engine.start import build_optimizer, build_trainables
from defect_pipeline.ml.losses import ClassificationLoss, MultitaskLoss, SegmentationLoss
from defect_pipeline.ml.models import create_model
from defect_pipeline.ml.speed import adamw_options, compile_with_fallback, is_compiled, resolve_channels_last


def test_channels_last_is_opt_in_or_chosen_by_family() -> None:
    assert resolve_channels_last("auto", "convnext_atto")[0] is True
    on, reason = resolve_channels_last("auto", "efficientnet_b0")
    assert on is False and "-13 %" in reason
    assert resolve_channels_last(True, "efficientnet_b0") == (True, "trainer.channels_last: true")
    with pytest.raises(ValueError, match="trainer.channels_last must be true, false or auto"):
        resolve_channels_last("yes", "convnext_atto")
    trainer = validate_parameters({"trainer": {"channels_last": "auto", "compile": True}})["trainer"]
    settings = resolve_trainer(**trainer.model_dump() | {"accelerator": "cpu", "precision": "fp32"})
    assert (settings.channels_last, settings.compile) == ("auto", True)
    assert validate_parameters({"trainer": {}})["trainer"].channels_last is False  # default: off
    with pytest.raises(ParameterError, match="trainer.compile"):
        validate_parameters({"trainer": {"compile": "sometimes"}})


def test_fused_adamw_on_cuda_only() -> None:
    assert adamw_options("cuda:1") == {"fused": True} and adamw_options("cpu") == {}
    model = nn.Linear(3, 2)
    model.backbone = nn.Linear(2, 2)
    optimizer = build_optimizer(model, nn.Module(), lr=0.1, backbone_lr=0.1, weight_decay=0.0, freeze_backbone=False)
    assert not optimizer.defaults.get("fused")


def _tiny_parts():
    net = create_model("resnet18", num_image_classes=3, num_seg_classes=3, seg_mode="multiclass",
                       decoder_channels=32, image_size=64)
    loss = MultitaskLoss(ClassificationLoss(3), SegmentationLoss("multiclass"))
    return net, loss


@pytest.mark.filterwarnings("ignore:.*random initialisation")
def test_build_trainables_puts_the_model_and_batches_in_channels_last() -> None:
    net, loss = _tiny_parts()
    parts = build_trainables(net, loss, EngineConfig(epochs=1, lr=1e-3, backbone_lr=1e-3, weight_decay=0.0,
                                                     channels_last=True), steps_per_epoch=1)
    conv = next(m for m in parts.model.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not is_compiled(parts.model)
    batch = Batch(image=torch.rand(2, 3, 32, 32), mask=torch.zeros(2, 32, 32, dtype=torch.long),
                  label=torch.zeros(2, dtype=torch.long)).to("cpu", non_blocking=True, channels_last=True)
    assert batch.image.is_contiguous(memory_format=torch.channels_last)
    assert set(net.state_dict()) == set(_tiny_parts()[0].state_dict())  # checkpoints keep their keys


def test_a_compile_that_fails_at_the_first_call_falls_back_and_says_why(monkeypatch, caplog) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: broken)
    model = nn.Linear(4, 2)
    expected = model(torch.ones(1, 4))
    assert compile_with_fallback(model, enabled=True).startswith("on")
    with caplog.at_level(logging.WARNING, logger="defect_pipeline.ml.speed"):
        out = model(torch.ones(1, 4))
    torch.testing.assert_close(out, expected)
    assert "torch.compile failed (RuntimeError: no C++ compiler found)" in caplog.text and not is_compiled(model)

    def refuses(fn, **kwargs):
        raise RuntimeError("torch.compile is not supported on Python 3.14+")

    monkeypatch.setattr(torch, "compile", refuses)
    other = nn.Linear(4, 2)
    assert compile_with_fallback(other, enabled=True).startswith("not available (RuntimeError: torch.compile is")
    assert compile_with_fallback(other, enabled=False) == "off" and not is_compiled(other)


def test_compile_on_a_tiny_model_gives_the_eager_outputs(caplog) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    keys = set(model.state_dict())
    x = torch.rand(2, 3, 8, 8)
    expected = model(x)
    with caplog.at_level(logging.WARNING, logger="defect_pipeline.ml.speed"):
        description = compile_with_fallback(model, enabled=True)
        out = model(x)
    if not is_compiled(model):  # the platform cannot compile: the fallback ran, with its reason
        pytest.skip(f"torch.compile cannot compile on this platform: {description}; {caplog.text.strip()}")
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    out.sum().backward()  # gradients flow through the compiled forward
    assert model[0].weight.grad is not None and set(model.state_dict()) == keys
