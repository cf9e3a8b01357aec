"""Validation previews during training: which images, what is drawn, when, and that drawing them leaves training
exactly as it was (same random numbers, same metrics, same weights).

Against the code before the change these fail (no ``val_preview`` module); the equivalence test also fails when the
preview does not restore the RNG states (checked by replacing ``rng_untouched`` with a no-op: the histories differ,
because the tiny validation set below draws its "augmentation" from the global RNG, as the training set does)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from matplotlib.figure import Figure

from defect_pipeline.ml.val_preview import (
    FigureFolder,
    PreviewingLogger,
    ValidationPreview,
    preview_size,
    select_preview_indices,
)
from tests.ml.test_engine import LABELS, Squares, TinyNet, config, run

TIMINGS = {"epoch_seconds", "train_samples_per_s", "val_samples_per_s", "peak_rss_mb"}


class Recorder:
    """A training logger that keeps what it is given."""

    def __init__(self) -> None:
        self.epochs: list[int] = []
        self.figures: dict[str, Figure] = {}

    def log_steps(self, rows: list[dict]) -> None:
        pass

    def log_epoch(self, epoch: int, step: int, row: dict) -> None:
        self.epochs.append(epoch)

    def log_checkpoint(self, kind: str, path: Path) -> None:
        pass

    def log_figure(self, name: str, figure: Figure) -> None:
        self.figures[name] = figure


def _preview(net: TinyNet, indices=(0, 1, 2)) -> ValidationPreview:
    """Squares images are already in [0, 1]: nothing to un-normalise."""
    return ValidationPreview(net, Squares(9, 2), LABELS, seg_mode="multiclass", indices=list(indices),
                             mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def test_the_images_are_a_fixed_round_robin_over_the_classes() -> None:
    targets = [0, 0, 1, 2, 1, 0, 2]
    assert select_preview_indices(targets, 4) == [0, 2, 3, 1]  # one of each class first, in class order
    assert select_preview_indices(targets, 6) == [0, 2, 3, 1, 4, 6]
    assert select_preview_indices(targets, 50) == [0, 2, 3, 1, 4, 6, 5]  # no more than there are
    assert select_preview_indices([], 4) == []
    assert [preview_size(n) for n in (1, 4, 6, 20)] == [4, 4, 6, 8]


def test_a_preview_shows_image_truth_and_prediction_per_row_and_leaves_the_model_as_it_was() -> None:
    torch.manual_seed(0)
    net = TinyNet().train()
    figure = _preview(net).render("stage2: validation predictions, epoch 5 (step 50)")
    axes = figure.get_axes()
    assert len(axes) == 9  # 3 images x (image, truth, prediction)
    titles = [ax.get_title() for ax in axes]
    assert titles[0] == "sample 0" and titles[1] == "truth: good" and titles[4] == "truth: scratch"
    assert titles[7] == "truth: spot" and all(t.startswith("predicted: ") for t in titles[2::3])
    assert figure.get_suptitle() == "stage2: validation predictions, epoch 5 (step 50)"
    (legend,) = figure.legends  # the colours of the classes drawn (both defect squares are in the truth)
    assert {t.get_text() for t in legend.get_texts()} >= {"scratch", "spot"}
    assert net.training  # back in train mode
    state = torch.get_rng_state()
    _preview(net).render("again")
    assert torch.equal(torch.get_rng_state(), state)  # the dataset's draws were undone


def test_previews_come_every_n_epochs_and_when_the_stage_ends(tmp_path: Path) -> None:
    recorder = Recorder()
    torch.manual_seed(0)
    logger = PreviewingLogger(recorder, _preview(TinyNet()), every_n_epochs=2, stage="stage2")
    for epoch in range(1, 6):
        logger.log_epoch(epoch, 10 * epoch, {"val_loss": 1.0})
    assert recorder.epochs == [1, 2, 3, 4, 5]
    assert sorted(recorder.figures) == ["val_preview_epoch2.png", "val_preview_epoch4.png"]
    logger.finish(epoch=5, step=50)  # the stage ended after epoch 5 (its last, early stopping, a budget ...)
    logger.finish(epoch=5, step=50)
    assert sorted(recorder.figures) == ["val_preview_epoch2.png", "val_preview_epoch4.png", "val_preview_epoch5.png"]
    path = FigureFolder(str(tmp_path / "stage2")).save("val_preview_epoch2.png",
                                                        recorder.figures["val_preview_epoch2.png"])
    assert path.read_bytes().startswith(b"\x89PNG") and not list(path.parent.glob(".*.tmp"))
    with pytest.raises(ValueError, match="0 turns previews off"):
        PreviewingLogger(recorder, _preview(TinyNet()), every_n_epochs=0)


def test_an_epoch_just_drawn_is_not_drawn_again_at_the_end() -> None:
    recorder = Recorder()
    logger = PreviewingLogger(recorder, _preview(TinyNet()), every_n_epochs=2)
    logger.log_epoch(2, 20, {})
    recorder.figures.clear()
    logger.finish(epoch=2, step=20)
    assert not recorder.figures


def test_with_validations_every_n_steps_the_first_one_past_each_nth_epoch_is_drawn() -> None:
    recorder = Recorder()
    logger = PreviewingLogger(recorder, _preview(TinyNet()), every_n_epochs=2, by_step=True)
    for epoch, step in ((1, 4), (1, 8), (2, 12), (2, 16), (3, 20), (3, 24), (4, 28), (5, 36), (5, 40)):
        logger.log_epoch(epoch, step, {})
    assert sorted(recorder.figures) == ["val_preview_step20.png", "val_preview_step36.png"]  # past epochs 2 and 4
    logger.finish(epoch=5, step=40)
    assert "val_preview_step40.png" in recorder.figures


def test_the_final_preview_of_several_processes_loads_rank_0s_weights(caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(1)
    trained = TinyNet()
    torch.manual_seed(2)
    untrained = TinyNet()
    logger = PreviewingLogger(Recorder(), _preview(untrained), every_n_epochs=5, stage="stage3")
    logger.finish(epoch=3, step=30, weights=trained.state_dict)
    assert all(torch.equal(v, untrained.state_dict()[k]) for k, v in trained.state_dict().items())
    with caplog.at_level(logging.WARNING):
        logger.finish(epoch=4, step=40, weights=lambda: {"no": torch.zeros(1)})
    assert "stage3: no final validation preview (RuntimeError" in caplog.text


def test_a_preview_that_fails_is_a_warning_and_training_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    recorder = Recorder()
    broken = _preview(TinyNet(), indices=[99])  # no such validation image
    logger = PreviewingLogger(recorder, broken, every_n_epochs=1, stage="stage1")
    with caplog.at_level(logging.WARNING):
        logger.log_epoch(1, 3, {})
    assert recorder.epochs == [1] and not recorder.figures
    assert "stage1: the validation preview val_preview_epoch1.png could not be written (IndexError" in caplog.text


def test_training_with_previews_draws_the_same_random_numbers_as_without(tmp_path: Path) -> None:
    def train_once(folder: Path, with_preview: bool):
        torch.manual_seed(0)
        net = TinyNet()
        recorder = Recorder()
        tracker = PreviewingLogger(recorder, _preview(net), every_n_epochs=1) if with_preview else None
        _, result = run(folder, config(epochs=3), model=net, training_logger=tracker)
        return net, result, recorder

    plain_net, plain, _ = train_once(tmp_path / "plain", False)
    net, previewed, recorder = train_once(tmp_path / "previewed", True)
    assert sorted(recorder.figures) == [f"val_preview_epoch{e}.png" for e in (1, 2, 3)]
    for a, b in zip(plain.history, previewed.history, strict=True):
        assert {k: v for k, v in a.items() if k not in TIMINGS} == {k: v for k, v in b.items() if k not in TIMINGS}
    for name, value in plain_net.state_dict().items():
        assert torch.equal(value, net.state_dict()[name]), name


def test_with_step_control_the_previews_follow_the_validations_and_change_nothing(tmp_path: Path) -> None:
    """6 steps per epoch, validations every 4 steps, the stage ends at max_steps 14 (in epoch 3)."""
    cfg = config(epochs=4, val_every_n_steps=4, max_steps=14)

    def train_once(folder: Path, with_preview: bool):
        torch.manual_seed(0)
        net = TinyNet()
        recorder = Recorder()
        tracker = PreviewingLogger(recorder, _preview(net), every_n_epochs=2, by_step=True) if with_preview else None
        _, result = run(folder, cfg, model=net, training_logger=tracker)
        if tracker is not None:
            tracker.finish(epoch=result.epochs_run, step=result.global_step)  # what run_stage does
        return result, recorder

    plain, _ = train_once(tmp_path / "plain", False)
    previewed, recorder = train_once(tmp_path / "previewed", True)
    assert [(r["epoch"], r["global_step"]) for r in previewed.history] == [(1, 4), (2, 8), (2, 12), (3, 14)]
    assert sorted(recorder.figures) == ["val_preview_step14.png"]  # past epoch 2; also the end: drawn once
    for a, b in zip(plain.history, previewed.history, strict=True):
        assert {k: v for k, v in a.items() if k not in TIMINGS} == {k: v for k, v in b.items() if k not in TIMINGS}
