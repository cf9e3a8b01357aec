"""EMA of the weights (``EngineConfig.ema_decay`` / ``stageN.ema``): what validation, checkpoints and resume see.

On the tiny model of ``test_engine`` (24 samples, batch 4: 6 optimizer steps per epoch). Before the
EMA existed these tests failed (``EngineConfig`` had no ``ema_decay``: ``TypeError``); each checks
what a user relies on: the validation figures are the average's (not the raw weights') and equal a
hand-computed average's, ``best``/``last`` hold the average as ``model`` (what the next stage and the
package read) and the raw weights as ``raw_model``, and a stage resumed with an EMA ends bit for bit
where the uninterrupted one ended (CPU).
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from defect_pipeline.config.training import StageParams
from defect_pipeline.ml.checkpoint import CheckpointStore, safe_torch_load
from defect_pipeline.ml.distributed import resolve_trainer
from defect_pipeline.ml.engine import train, validate
from defect_pipeline.ml.engine.ema import default_warmup_steps, ema_decay_at_step
from defect_pipeline.ml.metrics import MultitaskMetrics
from defect_pipeline.ml.stage import _engine_config, _last_weights
from defect_pipeline.ml.val_preview import PreviewingLogger
from tests.ml.test_engine import LABELS, META, InterruptAfter, Squares, TinyNet, config, loaders, make_loss, run
from tests.ml.test_val_preview import Recorder, _preview

DECAY, WARMUP = 0.8, 4


def _timeless(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("epoch_seconds", "train_samples_per_s", "val_samples_per_s",
                                                      "peak_rss_mb")}


def test_the_decay_grows_the_averaging_window_linearly_over_the_warmup() -> None:
    assert ema_decay_at_step(0, decay=0.9, warmup_steps=10) == 0.0  # the average starts as the model
    # window 1 / (1 - 0.9) = 10 steps, reached at step 10; at step 5 it is 1 + 9 * 5 / 10 = 5.5 steps
    assert ema_decay_at_step(5, decay=0.9, warmup_steps=10) == pytest.approx(1 - 1 / 5.5)
    assert ema_decay_at_step(10, decay=0.9, warmup_steps=10) == 0.9 == ema_decay_at_step(99, decay=0.9,
                                                                                          warmup_steps=10)
    assert ema_decay_at_step(1, decay=0.9, warmup_steps=0) == 0.9
    assert default_warmup_steps(0.999) == 10_000 and default_warmup_steps(0.9) == 100
    with pytest.raises(ValueError, match="decay must be in"):
        ema_decay_at_step(1, decay=1.0, warmup_steps=0)


class FixedSquares(Squares):
    """Squares without the per-draw noise (``Squares`` draws it from the global RNG): a validation set whose
    figures depend on the weights only."""

    def __getitem__(self, i: int) -> dict:
        return dict(self.items[i])


def run_fixed_val(store_path: Path, cfg) -> tuple[TinyNet, object]:
    torch.manual_seed(0)
    net = TinyNet()
    val_loader = DataLoader(FixedSquares(9, 2), batch_size=4, shuffle=False)
    result = train(net, make_loss("fixed"), loaders()[0], val_loader, metrics=MultitaskMetrics(LABELS, "multiclass"),
                   config=cfg, store=CheckpointStore(str(store_path)), meta=META)
    return net, result


def _manual_ema(step_dir: Path, initial: dict[str, torch.Tensor], steps: int) -> dict[str, torch.Tensor]:
    """The average by hand, from the raw weights after every step (``step_<N>.pt`` of a run without EMA)."""
    average = {k: v.clone() for k, v in initial.items()}
    for step in range(1, steps + 1):
        raw = safe_torch_load(step_dir / f"step_{step}.pt")["model"]
        decay = ema_decay_at_step(step, decay=DECAY, warmup_steps=WARMUP)
        for key, value in raw.items():
            # a + (1 - decay) (v - a), in lerp's rounding (decay a + (1 - decay) v rounds differently: ~1e-7)
            average[key] = average[key].lerp(value, 1 - decay) if value.is_floating_point() else value.clone()
    return average


def test_validation_measures_the_ema_which_equals_a_hand_computed_average(tmp_path: Path) -> None:
    torch.manual_seed(0)
    initial = TinyNet().state_dict()  # run() seeds 0 before building its net: the same start
    _, raw = run_fixed_val(tmp_path / "raw", config(epochs=2, checkpoint_every_n_steps=1, keep_last_n=None))
    _, ema = run_fixed_val(tmp_path / "ema", config(epochs=2, ema_decay=DECAY, ema_warmup_steps=WARMUP))
    manual = _manual_ema(tmp_path / "raw", initial, 12)
    last = safe_torch_load(tmp_path / "ema" / "last.pt")
    for key, value in manual.items():  # last.pt's model is the average, raw_model the weights trained
        torch.testing.assert_close(last["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    raw_last = safe_torch_load(tmp_path / "raw" / "last.pt")["model"]
    for key, value in raw_last.items():  # the average does not change the training itself
        torch.testing.assert_close(last["raw_model"][key], value, rtol=0, atol=0, msg=key)
    assert "raw_model" not in safe_torch_load(tmp_path / "raw" / "last.pt")  # no EMA: model is all there is
    # the history's validation figures are the average's: those of the hand-made average, not the raw weights'
    net = TinyNet()
    net.load_state_dict(manual)
    by_hand = validate(net, make_loss("fixed"), DataLoader(FixedSquares(9, 2), batch_size=4),
                       MultitaskMetrics(LABELS, "multiclass"), device="cpu", precision="fp32", step=12, total_steps=12)
    assert ema.history[-1]["val_loss"] == pytest.approx(by_hand["val_loss"], rel=1e-6)
    assert ema.history[-1]["val_combined_score"] == pytest.approx(by_hand["val_combined_score"], rel=1e-6)
    for ema_row, raw_row in zip(ema.history, raw.history, strict=True):
        assert ema_row["train_loss"] == raw_row["train_loss"]  # same training ...
        assert ema_row["val_loss"] != pytest.approx(raw_row["val_loss"], rel=1e-4)  # ... other weights measured
    best = safe_torch_load(tmp_path / "ema" / "best.pt")
    assert "raw_model" in best and best["epoch"] == ema.best_epoch


@pytest.mark.parametrize("where", ["after_epoch", "mid_epoch"])
def test_resume_with_ema_equals_an_uninterrupted_run(tmp_path: Path, where: str) -> None:
    """Interrupted after epoch 2's checkpoint, or resumed from a mid-epoch ``step_9.pt`` copied over
    ``last.pt``: history, the average and the raw weights end bit for bit as without the interruption."""
    cfg = config(epochs=4, ema_decay=DECAY, ema_warmup_steps=WARMUP, checkpoint_every_n_steps=3, keep_last_n=None)
    _, full = run(tmp_path / "full", cfg, loss_weighting="uncertainty")
    split = tmp_path / "split"
    if where == "after_epoch":
        with pytest.raises(KeyboardInterrupt):
            run(split, cfg, loss_weighting="uncertainty", training_logger=InterruptAfter(2))
    else:
        shutil.copytree(tmp_path / "full", split)
        shutil.copy(split / "step_9.pt", split / "last.pt")  # epoch 2, 3 of its 6 steps done
    _, resumed = run(split, cfg, loss_weighting="uncertainty")
    assert resumed.resumed_from_epoch in (1, 2) and resumed.global_step == full.global_step == 24
    assert [_timeless(r) for r in resumed.history] == [_timeless(r) for r in full.history]
    full_last, resumed_last = (safe_torch_load(p / "last.pt") for p in (tmp_path / "full", split))
    for kind in ("model", "raw_model"):
        for key, value in full_last[kind].items():
            assert torch.equal(resumed_last[kind][key], value), (kind, key)


def test_resuming_with_the_ema_switched_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, config(epochs=3, ema_decay=DECAY), training_logger=InterruptAfter(1))
    with pytest.raises(ValueError, match="written with an EMA of the weights, but this stage keeps none"):
        run(tmp_path, config(epochs=3))


def test_the_stage_block_turns_ema_into_engine_settings() -> None:
    settings = resolve_trainer(accelerator="cpu", devices=1, strategy="auto", num_nodes=1, precision="fp32")
    assert _engine_config(StageParams(), settings, "convnext_atto").ema_decay is None  # off by default
    on = _engine_config(StageParams(ema={"enabled": True, "decay": 0.99}), settings, "convnext_atto")
    assert (on.ema_decay, on.ema_warmup_steps) == (0.99, 1000)
    explicit = _engine_config(StageParams(ema={"enabled": True, "warmup_steps": 0}), settings, "convnext_atto")
    assert (explicit.ema_decay, explicit.ema_warmup_steps) == (0.999, 0)
    with pytest.raises(ValueError, match="decay"):
        StageParams(ema={"enabled": True, "decay": 1.0})


def test_previews_of_an_ema_stage_draw_the_average_from_last_pt(tmp_path: Path) -> None:
    """The stage's previews draw what validation measured: ``last.pt``'s ``model`` (the average), loaded into
    the preview's own network (the stage gives it a copy, so the trained network is not touched)."""
    run(tmp_path, config(epochs=2, ema_decay=DECAY, ema_warmup_steps=WARMUP))
    torch.manual_seed(5)
    drawn = TinyNet()
    recorder = Recorder()
    logger = PreviewingLogger(recorder, _preview(drawn), every_n_epochs=1, stage="stage2",
                              weights=functools.partial(_last_weights, CheckpointStore(str(tmp_path))))
    logger.log_epoch(2, 12, {"val_loss": 1.0})
    assert list(recorder.figures) == ["val_preview_epoch2.png"]
    average = safe_torch_load(tmp_path / "last.pt")["model"]
    assert all(torch.equal(value, average[key]) for key, value in drawn.state_dict().items())
