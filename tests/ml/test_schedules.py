"""Learning-rate, loss-weight and dropout schedules: values at key steps and LambdaLR behaviour."""

from __future__ import annotations

import math

import pytest
import torch

from defect_pipeline.ml.schedules import (
    create_scheduler,
    dropout_at_step,
    dynamic_weight,
    lr_at_step,
    lr_multiplier,
)

KW = dict(base_lr=1e-3, total_steps=110, warmup_steps=10, warmup_lr=1e-5, eta_min=1e-6)


def test_lr_key_steps():
    assert lr_at_step(0, **KW) == pytest.approx(1e-5)
    assert lr_at_step(5, **KW) == pytest.approx(1e-5 + (1e-3 - 1e-5) / 2)
    assert lr_at_step(10, **KW) == pytest.approx(1e-3)  # end of warmup = peak
    assert lr_at_step(60, **KW) == pytest.approx((1e-3 + 1e-6) / 2)  # middle of the cosine
    assert lr_at_step(110, **KW) == pytest.approx(1e-6)
    assert lr_at_step(500, **KW) == pytest.approx(1e-6)  # clamped after the end
    assert lr_at_step(-3, **KW) == pytest.approx(1e-5)


def test_lr_warmup_increasing_and_cosine_decreasing():
    warm = [lr_at_step(s, **KW) for s in range(0, 11)]
    cos = [lr_at_step(s, **KW) for s in range(10, 111)]
    assert all(b > a for a, b in zip(warm, warm[1:]))
    assert all(b < a for a, b in zip(cos, cos[1:]))


def test_lr_without_warmup_and_degenerate_lengths():
    assert lr_at_step(0, base_lr=0.1, total_steps=10) == pytest.approx(0.1)
    assert lr_at_step(10, base_lr=0.1, total_steps=10) == pytest.approx(0.0)
    # warmup covering the whole run: linear ramp then the (finished) schedule's end value
    assert lr_at_step(4, base_lr=1.0, total_steps=8, warmup_steps=8) == pytest.approx(0.5)
    assert lr_at_step(8, base_lr=1.0, total_steps=8, warmup_steps=8, eta_min=0.1) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        lr_at_step(0, base_lr=1.0, total_steps=5, warmup_steps=6)
    with pytest.raises(ValueError):
        lr_at_step(0, base_lr=1.0, total_steps=0)


def test_multiplier_is_relative_lr():
    for s in (0, 3, 10, 47, 110):
        assert lr_multiplier(s, total_steps=110, warmup_steps=10, warmup_lr_ratio=0.01, eta_min_ratio=0.001) == \
            pytest.approx(lr_at_step(s, base_lr=1.0, total_steps=110, warmup_steps=10, warmup_lr=0.01, eta_min=0.001))


def _optimizer():
    backbone, head = torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)
    return torch.optim.SGD([{"params": backbone.parameters(), "lr": 1e-4},
                            {"params": head.parameters(), "lr": 1e-3}], lr=1e-3)


def test_scheduler_per_group_shape_and_ratio():
    opt = _optimizer()
    sched = create_scheduler(opt, total_steps=20, warmup_steps=4, warmup_lr_ratio=0.1, eta_min_ratio=0.01)
    seen = []
    for step in range(25):
        lrs = [g["lr"] for g in opt.param_groups]
        seen.append(lrs)
        mult = lr_multiplier(step, total_steps=20, warmup_steps=4, warmup_lr_ratio=0.1, eta_min_ratio=0.01)
        assert lrs[0] == pytest.approx(1e-4 * mult)
        assert lrs[1] == pytest.approx(1e-3 * mult)
        assert lrs[1] / lrs[0] == pytest.approx(10.0)
        opt.step()
        sched.step()
    assert seen[0] == pytest.approx([1e-5, 1e-4])  # warmup start
    assert seen[4] == pytest.approx([1e-4, 1e-3])  # end of warmup: the groups' own base LRs
    assert seen[20] == pytest.approx([1e-6, 1e-5])  # eta_min relative to each group


def test_scheduler_state_dict_resumes():
    opt = _optimizer()
    sched = create_scheduler(opt, total_steps=20, warmup_steps=4)
    for _ in range(7):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = _optimizer()
    sched2 = create_scheduler(opt2, total_steps=20, warmup_steps=4)
    sched2.load_state_dict(state)
    opt2.step()
    sched2.step()
    expected = lr_multiplier(8, total_steps=20, warmup_steps=4)
    assert opt2.param_groups[1]["lr"] == pytest.approx(1e-3 * expected)


def test_dynamic_weight_endpoints_and_linearity():
    assert dynamic_weight(0, total_steps=100, start=1.0, end=0.2) == pytest.approx(1.0)
    assert dynamic_weight(50, total_steps=100, start=1.0, end=0.2) == pytest.approx(0.6)
    assert dynamic_weight(100, total_steps=100, start=1.0, end=0.2) == pytest.approx(0.2)
    assert dynamic_weight(1000, total_steps=100, start=1.0, end=0.2) == pytest.approx(0.2)
    assert dynamic_weight(0, total_steps=100, start=0.5, end=2.0) == pytest.approx(0.5)
    assert dynamic_weight(100, total_steps=100, start=0.5, end=2.0) == pytest.approx(2.0)
    assert dynamic_weight(3, total_steps=0, start=0.5, end=2.0) == pytest.approx(2.0)


def test_dropout_schedule():
    assert dropout_at_step(0, target=0.3, warmup_step=5) == 0.0
    assert dropout_at_step(4, target=0.3, warmup_step=5) == 0.0
    assert dropout_at_step(5, target=0.3, warmup_step=5) == pytest.approx(0.3)
    assert dropout_at_step(100, target=0.3, warmup_step=5) == pytest.approx(0.3)
    assert dropout_at_step(0, target=0.3, warmup_step=0) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        dropout_at_step(0, target=1.0, warmup_step=0)


def test_cosine_midpoint_formula():
    # a quarter into the cosine: eta_min + (base - eta_min) * (1 + cos(pi/4)) / 2
    lr = lr_at_step(35, **KW)
    assert lr == pytest.approx(1e-6 + (1e-3 - 1e-6) * (1 + math.cos(math.pi / 4)) / 2)
