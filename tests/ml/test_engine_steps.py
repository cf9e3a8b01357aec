"""Step-level control of a stage: ``max_steps``, ``val_every_n_steps``, ``checkpoint_every_n_steps``/``keep_last_n``.

On the tiny model of ``test_engine`` (24 samples, batch 4: 6 optimizer steps per epoch). Every
test here failed on the engine before these settings existed (``EngineConfig`` had none of them:
``TypeError``), and each checks what the setting promises, not only that it is accepted: the
stage's length and the LR / loss-weight schedules spanning it, one history row per validation
with its training figures over the steps since the previous one, early stopping and ``best``
following the validations, the numbered files and their rotation, and a stage resumed from a
copied ``step_<N>.pt`` ending bit for bit where the uninterrupted run ended (CPU).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch

from defect_pipeline.ml.checkpoint import CheckpointStore, safe_torch_load
from defect_pipeline.ml.engine import EngineConfig, train
from defect_pipeline.ml.losses import ClassificationLoss, MultitaskLoss, SegmentationLoss
from defect_pipeline.ml.metrics import MultitaskMetrics
from defect_pipeline.ml.schedules import dynamic_weight, lr_multiplier
from tests.ml.test_engine import LABELS, META, StepRecorder, TinyNet, config, loaders, make_loss, run


class CheckpointRecorder(StepRecorder):
    """A training logger that also keeps the checkpoint events, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.checkpoints: list[tuple[str, str]] = []

    def log_checkpoint(self, kind: str, path: Path) -> None:
        self.checkpoints.append((kind, Path(path).name))


def _timeless(row: dict) -> dict:
    """A history row without its timings (they differ between any two runs)."""
    return {k: v for k, v in row.items() if k not in ("epoch_seconds", "train_samples_per_s", "val_samples_per_s",
                                                      "peak_rss_mb")}


def test_max_steps_sets_the_stage_length_and_every_schedule_spans_it(tmp_path: Path) -> None:
    """9 steps of 6 per epoch: epoch 2 ends after its third step; LR and dynamic loss weights reach their
    ends at step 9 (the schedule length is max_steps, not epochs x steps per epoch)."""
    torch.manual_seed(0)
    loss_fn = MultitaskLoss(ClassificationLoss(LABELS.num_image_classes), SegmentationLoss("multiclass"),
                            weighting="dynamic", alpha_start=0.5, alpha_end=1.0, beta_start=1.0, beta_end=0.3)
    train_loader, val_loader = loaders()
    result = train(TinyNet(), loss_fn, train_loader, val_loader, metrics=MultitaskMetrics(LABELS, "multiclass"),
                   config=config(epochs=4, max_steps=9, warmup_epochs=0.5), store=CheckpointStore(str(tmp_path)),
                   meta=META)
    assert (result.global_step, result.total_steps, result.epochs_run) == (9, 9, 2)
    assert [r["step"] for r in result.steps] == list(range(1, 10))
    assert [(r["epoch"], r["global_step"]) for r in result.history] == [(1, 6), (2, 9)]
    shape = config(epochs=4, max_steps=9, warmup_epochs=0.5).lr_schedule(6)
    assert shape["total_steps"] == 9 and shape["warmup_steps"] == 3
    assert [r["lr_head"] for r in result.steps] == pytest.approx(
        [1e-2 * lr_multiplier(r["step"] - 1, **shape) for r in result.steps])
    assert result.history[-1]["lr_head"] == pytest.approx(1e-2 * 0.01)  # cosine ended at eta_min at step 9
    # the loss weights of the last batch (step index 8 of 9): the dynamic ramp spans max_steps too
    assert result.history[-1]["loss_weight_alpha"] == pytest.approx(dynamic_weight(8, total_steps=9, start=0.5,
                                                                                   end=1.0))
    assert result.history[-1]["loss_weight_beta"] == pytest.approx(1.0 + (0.3 - 1.0) * 8 / 9)
    last = safe_torch_load(tmp_path / "last.pt")
    assert last["finished"] and last["global_step"] == last["total_steps"] == 9 and last["epoch"] == 2


def test_a_resumed_max_steps_stage_stops_at_max_steps(tmp_path: Path) -> None:
    """A step checkpoint written at step max_steps (before the last epoch's end and its validation) resumes
    to validate and finish, without training another batch."""
    _, full = run(tmp_path / "full", config(epochs=4, max_steps=9, checkpoint_every_n_steps=9))
    store = tmp_path / "split"
    store.mkdir()
    shutil.copy(tmp_path / "full" / "step_9.pt", store / "last.pt")
    _, resumed = run(store, config(epochs=4, max_steps=9, checkpoint_every_n_steps=9))
    assert resumed.global_step == 9 and [r["step"] for r in resumed.steps] == list(range(1, 10))
    assert [_timeless(r) for r in resumed.history] == [_timeless(r) for r in full.history]


def test_warmup_longer_than_max_steps_is_refused_naming_both_settings() -> None:
    with pytest.raises(ValueError, match=r"warmup_epochs 2 is 12 optimizer steps .*max_steps 10: 10 steps"):
        config(max_steps=10, warmup_epochs=2).lr_schedule(6)


def test_val_every_n_steps_makes_a_history_row_per_validation(tmp_path: Path) -> None:
    """Validations after steps 4, 8 and 12 (2 epochs of 6 steps): three rows, the second spanning the epoch
    boundary; a row's training loss is the mean over the steps since the previous row."""
    recorder = StepRecorder()
    _, result = run(tmp_path, config(epochs=2, val_every_n_steps=4, dropout_rate=0.0), training_logger=recorder)
    assert [(r["epoch"], r["global_step"]) for r in result.history] == [(1, 4), (2, 8), (2, 12)]
    assert recorder.epochs == [1, 2, 2]
    assert [r["step"] for r in recorder.steps] == list(range(1, 13))  # every step row logged once
    step_loss = {r["step"]: r["train_loss"] for r in result.steps}  # all batches hold 4 samples
    for row, steps in zip(result.history, (range(1, 5), range(5, 9), range(9, 13)), strict=True):
        assert row["train_loss"] == pytest.approx(sum(step_loss[s] for s in steps) / 4, rel=1e-12)
    assert result.epochs_run == 2 and result.global_step == 12


def test_val_every_n_steps_of_one_epoch_gives_the_default_history(tmp_path: Path) -> None:
    """Validating every 6 steps is validating at each epoch's end: the same rows as the default."""
    _, default = run(tmp_path / "default", config(epochs=3))
    _, by_step = run(tmp_path / "by_step", config(epochs=3, val_every_n_steps=6))
    assert [_timeless(r) for r in by_step.history] == [_timeless(r) for r in default.history]


def test_early_stopping_and_best_follow_the_validations(tmp_path: Path) -> None:
    """A min_delta no value can beat: the first validation is the best, two more without improvement stop
    the stage at step 3, in the middle of epoch 1; best.pt holds step 1."""
    _, result = run(tmp_path, config(epochs=3, val_every_n_steps=1, patience=2, min_delta=1e9))
    assert result.stop_reason == "early_stopping" and result.global_step == 3
    assert [r["global_step"] for r in result.history] == [1, 2, 3]
    assert (result.best_step, result.best_epoch, result.epochs_run) == (1, 1, 1)
    best, last = safe_torch_load(tmp_path / "best.pt"), safe_torch_load(tmp_path / "last.pt")
    assert best["global_step"] == 1 and best["best_step"] == 1
    assert last["finished"] and last["global_step"] == 3 and "partial_epoch" not in last


def test_step_checkpoints_are_numbered_atomic_and_the_oldest_removed(tmp_path: Path) -> None:
    recorder = CheckpointRecorder()
    run(tmp_path, config(epochs=2, checkpoint_every_n_steps=2, keep_last_n=3), training_logger=recorder)
    assert [name for kind, name in recorder.checkpoints if kind == "step"] == [f"step_{n}.pt" for n in
                                                                                (2, 4, 6, 8, 10, 12)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt", "step_10.pt", "step_12.pt",
                                                          "step_8.pt"]  # no temp file either
    for step in (8, 10, 12):
        saved = safe_torch_load(tmp_path / f"step_{step}.pt")
        # the state after step N, before that epoch's validation: the last finished epoch, and how far the next got
        assert (saved["kind"], saved["global_step"], saved["epoch"]) == ("step", step, 1)
        assert saved["partial_epoch"]["epoch"] == 2 and saved["partial_epoch"]["batches_done"] == step - 6
    every = tmp_path / "every"
    run(every, config(epochs=2, checkpoint_every_n_steps=5, keep_last_n=None))
    assert sorted(p.name for p in every.glob("step_*.pt")) == ["step_10.pt", "step_5.pt"]


def test_keep_last_n_never_removes_the_file_just_written(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path))
    for step in (40, 60, 80):
        store.save_step(step, {"global_step": step})
    store.save_step(20, {"global_step": 20})  # a run resumed from an earlier step writes step_20 again
    removed = store.remove_old_steps(2, newest=20)
    assert [p.name for p in removed] == ["step_40.pt", "step_60.pt"]
    assert [step for step, _ in store.step_files()] == [20, 80]


@pytest.mark.parametrize(("settings", "resume_step"), [
    ({"epochs": 3, "checkpoint_every_n_steps": 4}, 4),  # mid-epoch 1, validation once per epoch
    ({"epochs": 3, "val_every_n_steps": 4, "checkpoint_every_n_steps": 3}, 6),  # epoch 1's end, mid-period 4-8
    ({"epochs": 4, "max_steps": 15, "val_every_n_steps": 5, "checkpoint_every_n_steps": 5}, 10),  # at a validation
], ids=["per-epoch", "period-across-epochs", "max-steps"])
def test_resume_from_a_step_checkpoint_equals_an_uninterrupted_run(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, settings: dict, resume_step: int) -> None:
    """Copy ``step_<N>.pt`` over ``last.pt`` and run the stage again: history, step rows, final weights and
    ``best.pt`` are exactly (bit for bit) those of the run that went on without stopping."""
    cfg = config(keep_last_n=None, **settings)
    full_net, full = run(tmp_path, cfg, loss_weighting="uncertainty")
    full_best = safe_torch_load(tmp_path / "best.pt")["model"]
    shutil.copy(tmp_path / f"step_{resume_step}.pt", tmp_path / "last.pt")
    with caplog.at_level(logging.WARNING):
        resumed_net, resumed = run(tmp_path, cfg, loss_weighting="uncertainty")
    assert "come from a run that went past it" in caplog.text  # the later step files are named
    assert not resumed.already_finished and resumed.global_step == full.global_step
    assert [_timeless(r) for r in resumed.history] == [_timeless(r) for r in full.history]
    assert resumed.steps == full.steps
    for (name, p), q in zip(full_net.state_dict().items(), resumed_net.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
    for name, value in safe_torch_load(tmp_path / "best.pt")["model"].items():
        torch.testing.assert_close(value, full_best[name], rtol=0, atol=0, msg=name)


def test_a_stop_signal_mid_period_resumes_to_the_same_rows(tmp_path: Path) -> None:
    """Killed after a mid-epoch validation (``last.pt`` then holds that point), the rerun ends equal."""
    class KillAtRow:
        def __init__(self) -> None:
            self.rows = 0

        def log_steps(self, rows: list[dict]) -> None:
            pass

        def log_epoch(self, epoch: int, step: int, row: dict) -> None:
            self.rows += 1
            if self.rows == 2:
                raise KeyboardInterrupt

        def log_checkpoint(self, kind: str, path: Path) -> None:
            pass

    cfg = config(epochs=2, val_every_n_steps=5)
    full_net, full = run(tmp_path / "full", cfg)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "split", cfg, training_logger=KillAtRow())
    assert safe_torch_load(tmp_path / "split" / "last.pt")["global_step"] == 10
    resumed_net, resumed = run(tmp_path / "split", cfg)
    assert [_timeless(r) for r in resumed.history] == [_timeless(r) for r in full.history]
    for (name, p), q in zip(full_net.state_dict().items(), resumed_net.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)


def test_the_default_writes_no_step_files_and_one_row_per_epoch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    train_loader, val_loader = loaders()
    result = train(TinyNet(), make_loss("fixed"), train_loader, val_loader,
                   metrics=MultitaskMetrics(LABELS, "multiclass"),
                   config=EngineConfig(epochs=2, lr=1e-2, backbone_lr=5e-3, weight_decay=0.01, progress=False),
                   store=CheckpointStore(str(tmp_path)), meta=META)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]
    assert [(r["epoch"], r["global_step"]) for r in result.history] == [(1, 6), (2, 12)]


def test_inspect_checkpoints_lists_the_step_files_in_step_order(tmp_path: Path) -> None:
    """The inventory names them ``step`` with their step and progress, ``step_12`` after ``step_8``."""
    from defect_pipeline.ml.inspection import inventory

    run(tmp_path, config(epochs=3, checkpoint_every_n_steps=4, keep_last_n=None))
    rows = inventory(tmp_path)
    assert [(r["file"], r["kind"]) for r in rows] == [
        ("best.pt", "best"), ("last.pt", "last"), ("step_4.pt", "step"), ("step_8.pt", "step"),
        ("step_12.pt", "step"), ("step_16.pt", "step")]
    assert [(r["global_step"], r["percent_complete"]) for r in rows[2:]] == [
        (4, 22.2), (8, 44.4), (12, 66.7), (16, 88.9)]


def test_curves_plot_rows_that_share_an_epoch_over_the_optimizer_step(tmp_path: Path) -> None:
    """Validations every 2 steps: curves.png plots over the optimizer step (over the epoch, three rows would
    stack on each x); one row per epoch keeps the epoch axis."""
    import pandas as pd

    from defect_pipeline.ml.curves import plot_training_curves

    _, result = run(tmp_path, config(epochs=2, val_every_n_steps=2))
    history = pd.DataFrame(result.history)
    figure = plot_training_curves(history, monitor="val_combined_score")
    loss_axis = figure.axes[0]
    assert loss_axis.get_xlabel() == "optimizer step"
    assert list(loss_axis.lines[0].get_xdata()) == [2, 4, 6, 8, 10, 12]
    per_epoch = plot_training_curves(pd.DataFrame(run(tmp_path / "default", config(epochs=2))[1].history),
                                     monitor="val_combined_score")
    assert per_epoch.axes[0].get_xlabel() == "epoch"
    assert list(per_epoch.axes[0].lines[0].get_xdata()) == [1, 2]
