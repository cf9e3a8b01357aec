"""A stage as long as its time budget (``epochs: auto`` + ``time_budget_s``): the estimate and the schedules.

The pure estimate (:func:`estimate_total_steps`), the step timer (:class:`BudgetSchedule`), and the
engine on the tiny model of ``test_engine`` with a fake clock that the data advance (every training
sample 0.25 s: a step of 4 takes 1 s; every validation sample 0.1 s) — no real time is measured or
asserted. Before this mode existed, ``time_budget_s`` only stopped the stage after the epoch that
passed it, with the LR schedule sized by ``epochs`` and cut wherever the budget ran out: these tests
fail there (``EngineConfig(epochs=None)`` was refused, ``epochs: auto`` too).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from defect_pipeline.config.training import StageParams
from defect_pipeline.ml.checkpoint import CheckpointStore
from defect_pipeline.ml.distributed import resolve_trainer
from defect_pipeline.ml.engine import EngineConfig, train
from defect_pipeline.ml.engine.budget import (
    MEASURE_STEPS,
    SKIP_STEPS,
    BudgetSchedule,
    estimate_total_steps,
    guess_validation_seconds,
)
from defect_pipeline.ml.losses import ClassificationLoss, MultitaskLoss, SegmentationLoss
from defect_pipeline.ml.metrics import MultitaskMetrics
from defect_pipeline.ml.schedules import dynamic_weight, lr_multiplier
from defect_pipeline.ml.stage import _engine_config
from tests.ml.test_engine import LABELS, META, InterruptAfter, Squares, TinyNet, config


def test_the_estimate_shares_the_time_left_among_steps_and_their_validations() -> None:
    # 10 steps took 10 s of 100; 1 s per step, a 2 s validation every 10 steps and one at the end:
    # (100 - 10 - 2) / (1 + 2 / 10) = 73.3 more steps
    assert estimate_total_steps(budget_s=100, elapsed_s=10, steps_done=10, step_seconds=1.0, validation_seconds=2.0,
                                steps_per_validation=10) == 83
    # over budget already: the stage ends where it is (never before a step already taken)
    assert estimate_total_steps(budget_s=100, elapsed_s=120, steps_done=90, step_seconds=1.0, validation_seconds=2.0,
                                steps_per_validation=10) == 90
    # a budget shorter than the warmup still runs the warmup
    assert estimate_total_steps(budget_s=10, elapsed_s=5, steps_done=5, step_seconds=1.0, validation_seconds=0.0,
                                steps_per_validation=10, min_steps=30) == 30
    with pytest.raises(ValueError, match="steps_per_validation >= 1"):
        estimate_total_steps(budget_s=10, elapsed_s=0, steps_done=0, step_seconds=1.0, validation_seconds=0.0,
                             steps_per_validation=0)
    # before a validation was timed: its batches at a third of a training batch each
    assert guess_validation_seconds(step_seconds=2.0, validation_batches=30, accumulate_grad_batches=2) == \
        pytest.approx(10.0)


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_the_timer_skips_the_first_steps_leaves_validations_out_and_estimates_after_every_validation() -> None:
    clock = FakeClock()
    budget = BudgetSchedule(1000.0, steps_per_validation=50, validation_batches=10, accumulate_grad_batches=1,
                            min_steps=1, clock=clock, started=0.0)
    for step in range(1, SKIP_STEPS + MEASURE_STEPS + 1):
        clock.now += 5.0 if step <= SKIP_STEPS else 2.0  # slow first steps, then 2 s per step
        if step == 10:
            budget.validation_took(7.0)
            clock.now += 7.0
        due = budget.step_ended()
        proposal = budget.propose(step)
        if step < SKIP_STEPS + MEASURE_STEPS:  # 20 timed steps are 40 s, under 5% of the budget: still measuring
            assert due and proposal is None
    assert proposal["step_seconds"] == pytest.approx(2.0) and proposal["validation_seconds"] == 7.0
    assert proposal["at_step"] == 23 and proposal["elapsed_s"] == pytest.approx(15 + 40 + 7)
    budget.accept(proposal)
    clock.now += 2.0
    assert not budget.step_ended() and budget.propose(24) is None  # the re-estimate waits for a validation
    budget.validation_took(9.0)
    clock.now += 9.0 + 2.0
    assert budget.step_ended()
    again = budget.propose(25)
    assert again["validation_seconds"] == pytest.approx(8.0) and again["step_seconds"] == pytest.approx(2.0)
    budget.accept(again)
    for step in range(26, 36):  # the machine slows down: 4 s per step from here
        clock.now += 4.0
        assert not budget.step_ended() and budget.propose(step) is None  # no validation since the estimate
    budget.validation_took(10.0)
    clock.now += 10.0 + 4.0
    assert budget.step_ended()
    third = budget.propose(36)  # the steps since the last estimate, and the last validations: the new speed
    assert third["step_seconds"] == pytest.approx(4.0) and third["validation_seconds"] == pytest.approx(26 / 3)
    assert third["elapsed_s"] == pytest.approx(clock.now)
    assert third["total_steps"] == estimate_total_steps(budget_s=1000.0, elapsed_s=clock.now, steps_done=36,
                                                        step_seconds=4.0, validation_seconds=26 / 3,
                                                        steps_per_validation=50) < again["total_steps"]


def test_a_slow_step_ends_the_measurement_early() -> None:
    clock = FakeClock()
    budget = BudgetSchedule(100.0, steps_per_validation=50, validation_batches=10, accumulate_grad_batches=1,
                            min_steps=1, clock=clock, started=0.0)
    for step in range(1, SKIP_STEPS + 3):  # 2 timed steps of 3 s: 5% of 100 s reached
        clock.now += 3.0
        budget.step_ended()
        proposal = budget.propose(step)
    assert proposal is not None and proposal["at_step"] == SKIP_STEPS + 2


class ClockedSquares(Squares):
    """Squares whose every draw advances ``clock`` by ``seconds`` (``noise``: Squares' per-draw noise)."""

    def __init__(self, n: int, seed: int, clock: FakeClock, seconds: float, noise: bool = True) -> None:
        super().__init__(n, seed)
        self.clock, self.seconds, self.noise = clock, seconds, noise

    def __getitem__(self, i: int) -> dict:
        self.clock.now += self.seconds
        return super().__getitem__(i) if self.noise else dict(self.items[i])


class SlowingSquares(ClockedSquares):
    """ClockedSquares whose draws take ``factor`` times as long once the clock passed ``after`` seconds."""

    def __init__(self, *args, after: float, factor: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.after, self.factor = after, factor

    def __getitem__(self, i: int) -> dict:
        if self.clock.now >= self.after:
            self.clock.now += self.seconds * (self.factor - 1)
        return super().__getitem__(i)


def budget_run(store_path: Path, clock: FakeClock, budget_s: float = 60.0, training_logger=None, progress=False,
               train_data=None):
    torch.manual_seed(0)
    loss_fn = MultitaskLoss(ClassificationLoss(LABELS.num_image_classes), SegmentationLoss("multiclass"),
                            weighting="dynamic", alpha_start=0.5, alpha_end=1.0, beta_start=1.0, beta_end=0.3)
    train_data = ClockedSquares(24, 1, clock, 0.25) if train_data is None else train_data
    train_loader = DataLoader(train_data, batch_size=4, shuffle=True,
                              generator=torch.Generator().manual_seed(0))
    val_loader = DataLoader(ClockedSquares(9, 2, clock, 0.1, noise=False), batch_size=4)
    result = train(TinyNet(), loss_fn, train_loader, val_loader, metrics=MultitaskMetrics(LABELS, "multiclass"),
                   config=config(epochs=None, time_budget_s=budget_s, progress=progress),
                   store=CheckpointStore(str(store_path)),
                   meta=META, training_logger=training_logger, clock=clock)
    return result


def test_the_stage_ends_at_the_estimated_step_with_the_schedules_spanning_it(tmp_path: Path) -> None:
    """1 s per step (6 per epoch), 0.9 s per validation, a 60 s budget. First estimate after 3 timed steps
    (3 s = 5% of the budget) at step 6, the validation guessed (3 batches x 1 s / 3 = 1 s): 6 + (60 - 6 - 1) /
    (1 + 1/6) = 51; again at step 7, after epoch 1's validation (0.9 s): 7 + (60 - 7.9 - 0.9) / 1.15 = 51, and
    after every later validation (a steady machine: 51 each time)."""
    clock = FakeClock()
    result = budget_run(tmp_path, clock)
    first, second, *later = result.budget_estimates
    assert (first["at_step"], first["total_steps"], first["validation_measured"]) == (6, 51, False)
    assert (second["at_step"], second["total_steps"], second["validation_measured"]) == (7, 51, True)
    assert [e["at_step"] for e in later] == [13, 19, 25, 31, 37, 43, 49]
    assert {e["total_steps"] for e in later} == {51}
    assert second["step_seconds"] == pytest.approx(1.0) and second["validation_seconds"] == pytest.approx(0.9)
    assert result.global_step == result.total_steps == 51 and result.epochs_run == 9  # 8 epochs of 6, then 3
    assert result.stop_reason is None and [r["global_step"] for r in result.history][-2:] == [48, 51]
    assert 60 - 1.9 < clock.now <= 60  # it filled its budget without passing it
    # the LR of every step after the estimates follows warmup + cosine over 51 steps: it ends at the schedule's end
    for row in result.steps[7:]:
        expected = 1e-2 * lr_multiplier(row["step"] - 1, total_steps=51, warmup_steps=3, warmup_lr_ratio=0.1,
                                        eta_min_ratio=0.01)
        assert row["lr_head"] == pytest.approx(expected, rel=1e-9), row["step"]
    assert result.steps[-1]["lr_head"] < 1e-2 * 0.012  # eta_min_ratio 0.01: the cosine is at its end
    # and the dynamic loss weights reach their ends at step 51 too
    assert result.history[-1]["loss_weight_beta"] == pytest.approx(
        dynamic_weight(50, total_steps=51, start=1.0, end=0.3), rel=1e-6)


def test_a_machine_that_slows_mid_stage_still_ends_the_stage_within_its_budget(tmp_path: Path) -> None:
    """From 20 s on every training sample takes 0.5 s (a step 2 s instead of 1). The first estimates (steps 6
    and 7, at 1 s per step) say 51 steps; run to the end, those would take about 20 + 2 x 32 + 7 validations =
    90 s. Re-estimated after every validation from the steps since the last estimate, the stage ends near its
    60 s, and its LR schedule still reaches its end on the last step."""
    clock = FakeClock()
    result = budget_run(tmp_path, clock, train_data=SlowingSquares(24, 1, clock, 0.25, after=20.0, factor=2.0))
    estimates = result.budget_estimates
    assert estimates[0]["total_steps"] == estimates[1]["total_steps"] == 51
    assert estimates[-1]["step_seconds"] == pytest.approx(2.0) and estimates[-1]["total_steps"] < 40
    assert result.global_step == result.total_steps == estimates[-1]["total_steps"]
    assert 60 - 3 < clock.now <= 60 + 1  # within a step of its budget (was about 90 s with the first estimate)
    assert result.steps[-1]["lr_head"] < 1e-2 * 0.02  # the cosine reached its end with the stage


def test_the_progress_bar_shows_the_epoch_count_once_the_budget_is_measured(tmp_path: Path, capsys) -> None:
    """Before the first estimate the stage's length is unknown: epoch 1 reads ``1/?`` (before: ``1/166666667``,
    the provisional length); after it, the estimated 9 epochs."""
    budget_run(tmp_path, FakeClock(), progress=True)
    err = capsys.readouterr().err
    assert "test epoch 1/?" in err and "test epoch 2/9" in err and "epoch 1/1666" not in err


def test_a_resumed_budget_stage_keeps_its_length_and_ends_as_the_uninterrupted_one(tmp_path: Path) -> None:
    full = budget_run(tmp_path / "full", FakeClock())
    with pytest.raises(KeyboardInterrupt):
        budget_run(tmp_path / "split", FakeClock(), training_logger=InterruptAfter(3))
    resumed = budget_run(tmp_path / "split", FakeClock(500.0))  # another clock: the length comes from last.pt
    assert resumed.resumed_from_epoch == 3 and resumed.global_step == resumed.total_steps == full.total_steps
    # the estimates its checkpoint recorded, and no more (the interrupted run's budget time is not known to it)
    assert resumed.budget_estimates == full.budget_estimates[:len(resumed.budget_estimates)]
    assert len(resumed.budget_estimates) == 3  # steps 6, 7 and 13: the checkpoint of epoch 3 (step 18) holds them
    assert [r["lr_head"] for r in resumed.steps] == [r["lr_head"] for r in full.steps]
    assert [r["val_loss"] for r in resumed.history] == pytest.approx([r["val_loss"] for r in full.history], rel=1e-6)


def test_epochs_auto_with_a_time_budget_becomes_the_engine_s_budget_mode() -> None:
    assert StageParams(epochs="auto").epochs == "auto"  # without a budget: chosen from the data (ml/plan.py)
    with pytest.raises(ValueError, match="set time_budget_s"):
        EngineConfig(epochs=None, lr=1e-3, backbone_lr=1e-3, weight_decay=0.0)
    settings = resolve_trainer(accelerator="cpu", devices=1, strategy="auto", num_nodes=1, precision="fp32")
    engine = _engine_config(StageParams(epochs="auto", time_budget_s=1800), settings, "convnext_atto")
    assert engine.epochs is None and engine.spans_budget and engine.time_budget_s == 1800
    # explicit values win: max_steps is the length, and a number of epochs keeps the budget a stop only
    assert not _engine_config(StageParams(epochs="auto", max_steps=500, time_budget_s=60), settings, "convnext_atto").spans_budget
    assert not _engine_config(StageParams(epochs=5, time_budget_s=60), settings, "convnext_atto").spans_budget
