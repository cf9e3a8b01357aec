"""Learning-rate, loss-weight and dropout schedules: values at key steps and LambdaLR behaviour.

The ``cosine_restarts``, ``step`` and ``constant`` tests were written against the code before those
schedulers existed and failed there (``lr_at_step`` took no ``scheduler``; ``restart_cycle`` and
``SCHEDULERS`` did not exist); the cosine tests above them are unchanged and still pass, and
``test_cosine_is_the_default_and_unchanged`` pins the default to the formula it had.
"""

from __future__ import annotations

import math

import pytest
import torch

from defect_pipeline.ml.schedules import (
    SCHEDULERS,
    create_scheduler,
    dropout_at_step,
    dynamic_weight,
    lr_at_step,
    lr_multiplier,
    restart_cycle,
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


def _cos(progress: float, high: float = 1.0, low: float = 0.0) -> float:
    return low + (high - low) * (1 + math.cos(math.pi * progress)) / 2


def test_cosine_is_the_default_and_unchanged():
    for step in (0, 3, 10, 47, 110, 200):
        default = lr_at_step(step, **KW)
        assert lr_at_step(step, **KW, scheduler="cosine") == default
        expected = (1e-5 + (1e-3 - 1e-5) * step / 10 if step < 10
                    else _cos(min((step - 10) / 100, 1.0), 1e-3, 1e-6))
        assert default == pytest.approx(expected, rel=1e-12)


def test_cosine_restarts_values_at_chosen_steps():
    kw = dict(base_lr=1.0, total_steps=100, scheduler="cosine_restarts", restart_steps=20, eta_min=0.0)
    assert lr_at_step(0, **kw) == pytest.approx(1.0)
    assert lr_at_step(10, **kw) == pytest.approx(0.5)  # half way through the first cycle
    assert lr_at_step(19, **kw) == pytest.approx(_cos(19 / 20))  # just before the restart: near eta_min
    assert lr_at_step(20, **kw) == pytest.approx(1.0)  # restarted
    assert lr_at_step(35, **kw) == pytest.approx(_cos(15 / 20))
    assert lr_at_step(99, **kw) == pytest.approx(_cos(19 / 20))
    # the fifth cycle ends with the run: its final value is eta_min, not a restart no update uses
    assert lr_at_step(100, **kw) == lr_at_step(500, **kw) == pytest.approx(0.0)
    assert lr_at_step(110, **{**kw, "total_steps": 110}) == pytest.approx(0.5)  # a run ending mid-cycle
    # eta_min is each cycle's floor; the warmup comes first and the cycles count from its end
    warm = dict(base_lr=2.0, total_steps=100, warmup_steps=5, warmup_lr=0.2, eta_min=0.1,
                scheduler="cosine_restarts", restart_steps=10)
    assert lr_at_step(0, **warm) == pytest.approx(0.2)
    assert lr_at_step(5, **warm) == pytest.approx(2.0)
    assert lr_at_step(10, **warm) == pytest.approx(_cos(0.5, 2.0, 0.1))
    assert lr_at_step(15, **warm) == pytest.approx(2.0)  # the second cycle starts 10 steps after the warmup


def test_cosine_restarts_cycles_grow_by_restart_mult():
    kw = dict(base_lr=1.0, total_steps=200, scheduler="cosine_restarts", restart_steps=10, restart_mult=2.0)
    # cycles [0, 10), [10, 30), [30, 70), [70, 150), [150, 310)
    for start in (10, 30, 70, 150):
        assert lr_at_step(start, **kw) == pytest.approx(1.0), start
        assert lr_at_step(start - 1, **kw) < 0.1, start
    assert lr_at_step(20, **kw) == pytest.approx(0.5)
    assert lr_at_step(50, **kw) == pytest.approx(0.5)
    assert lr_at_step(110, **kw) == pytest.approx(0.5)


@pytest.mark.parametrize("mult", [1.0, 1.5, 2.0, 3.0])
def test_restart_cycle_boundaries_have_no_round_off(mult: float):
    start, length = 0.0, 7.0
    for index in range(25):
        for t in (start, start + length / 2, math.nextafter(start + length, 0.0)):
            assert restart_cycle(t, restart_steps=7, restart_mult=mult) == pytest.approx((index, start, length)), t
        start, length = start + length, length * mult


def test_step_schedule_values_at_chosen_steps():
    kw = dict(base_lr=1.0, total_steps=60, warmup_steps=4, warmup_lr=0.1, eta_min=0.5, scheduler="step",
              step_size=10, step_gamma=0.5)
    assert lr_at_step(0, **kw) == pytest.approx(0.1)
    assert lr_at_step(2, **kw) == pytest.approx(0.55)
    assert lr_at_step(4, **kw) == pytest.approx(1.0)
    assert lr_at_step(13, **kw) == pytest.approx(1.0)  # 9 steps after the warmup: not decayed yet
    assert lr_at_step(14, **kw) == pytest.approx(0.5)
    assert lr_at_step(24, **kw) == pytest.approx(0.25)
    assert lr_at_step(54, **kw) == pytest.approx(0.5 ** 5)  # below eta_min: it does not apply to step
    assert lr_at_step(90, **kw) == pytest.approx(lr_at_step(60, **kw))


def test_constant_schedule_is_flat_after_the_warmup():
    kw = dict(base_lr=3e-4, total_steps=50, warmup_steps=10, warmup_lr=3e-5, eta_min=1e-6, scheduler="constant")
    assert lr_at_step(0, **kw) == pytest.approx(3e-5)
    assert lr_at_step(5, **kw) == pytest.approx(3e-5 + (3e-4 - 3e-5) / 2)
    assert [lr_at_step(s, **kw) for s in (10, 25, 49, 50, 80)] == pytest.approx([3e-4] * 5)
    assert lr_at_step(7, base_lr=1.0, total_steps=50, scheduler="constant") == 1.0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"scheduler": "linear"}, "scheduler must be one of cosine, cosine_restarts, step, constant"),
    ({"scheduler": "cosine_restarts"}, "cosine_restarts needs restart_steps >= 1"),
    ({"scheduler": "cosine_restarts", "restart_steps": 5, "restart_mult": 0.5}, "restart_mult must be >= 1"),
    ({"scheduler": "step"}, "step scheduler needs step_size >= 1"),
    ({"scheduler": "step", "step_size": 5, "step_gamma": 1.0}, "step_gamma must be in"),
])
def test_bad_schedule_settings_say_what_is_wrong(kwargs: dict, message: str):
    with pytest.raises(ValueError, match=message):
        lr_multiplier(3, total_steps=20, **kwargs)
    with pytest.raises(ValueError, match=message):
        create_scheduler(_optimizer(), total_steps=20, **kwargs)


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_each_scheduler_drives_every_group_and_resumes(scheduler: str):
    shape = dict(total_steps=30, warmup_steps=3, warmup_lr_ratio=0.1, eta_min_ratio=0.01, scheduler=scheduler,
                 restart_steps=8, restart_mult=1.5, step_size=6, step_gamma=0.3)
    opt = _optimizer()
    sched = create_scheduler(opt, **shape)
    for step in range(12):
        assert [g["lr"] for g in opt.param_groups] == pytest.approx(
            [1e-4 * lr_multiplier(step, **shape), 1e-3 * lr_multiplier(step, **shape)])
        opt.step()
        sched.step()
    opt2 = _optimizer()
    sched2 = create_scheduler(opt2, **shape)
    sched2.load_state_dict(sched.state_dict())
    opt2.step()
    sched2.step()
    assert opt2.param_groups[1]["lr"] == pytest.approx(1e-3 * lr_multiplier(13, **shape))
