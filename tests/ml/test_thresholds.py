"""Threshold selection on synthetic score distributions, including the degenerate validation sets."""

from __future__ import annotations

import numpy as np
import pytest

from defect_pipeline.ml.labels import LabelSpace
from defect_pipeline.ml.thresholds import (
    PixelHistogram,
    RegionStats,
    select_class_thresholds,
    select_min_area,
    select_pixel_threshold,
    select_threshold,
)


def _scores(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Good images score around 0.3, defect images around 0.7, overlapping."""
    rng = np.random.default_rng(seed)
    positive = rng.random(n) < 0.4
    scores = np.clip(np.where(positive, rng.normal(0.7, 0.12, n), rng.normal(0.3, 0.12, n)), 0, 1)
    return scores, positive


def _f1(scores: np.ndarray, positive: np.ndarray, t: float) -> float:
    predicted = scores >= t
    tp = (predicted & positive).sum()
    return 2 * tp / (predicted.sum() + positive.sum())


def test_max_f1_finds_the_best_threshold_of_a_grid() -> None:
    scores, positive = _scores()
    choice = select_threshold(scores, positive, criterion="max_f1")
    grid_best = max(_f1(scores, positive, t) for t in np.linspace(0, 1, 1001))
    assert choice.f1 == pytest.approx(_f1(scores, positive, choice.threshold))
    assert choice.f1 >= grid_best - 1e-9
    assert 0.35 < choice.threshold < 0.65 and not choice.fallback
    assert choice.positives == positive.sum() and choice.negatives == (~positive).sum()


def test_target_false_alarm_rate_is_respected_with_the_most_recall() -> None:
    scores, positive = _scores()
    choice = select_threshold(scores, positive, criterion="target_false_alarm_rate", target=0.05)
    assert choice.false_alarm_rate <= 0.05
    # any lower threshold breaks the rate: this is the most recall the rate allows. The scores reach
    # far below any threshold that keeps 5 % false alarms, so there is always a next lower score.
    assert scores.min() < choice.threshold
    next_lower = scores[scores < choice.threshold].max()
    assert ((scores >= next_lower) & ~positive).sum() / (~positive).sum() > 0.05


def test_target_recall_is_reached_with_the_fewest_false_alarms() -> None:
    scores, positive = _scores()
    choice = select_threshold(scores, positive, criterion="target_recall", target=0.95)
    assert choice.recall >= 0.95
    # any higher threshold loses recall; the scores reach far above it, so there is a next higher score
    assert scores.max() > choice.threshold
    next_higher = scores[scores > choice.threshold].min()
    assert ((scores >= next_higher) & positive).sum() / positive.sum() < 0.95


@pytest.mark.parametrize(("positive", "word"), [(np.zeros(50, bool), "no positive"), (np.ones(50, bool), "no negative")])
def test_one_sided_validation_sets_fall_back_with_a_warning(positive: np.ndarray, word: str,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    scores = np.random.default_rng(1).random(50)
    for criterion, target in (("max_f1", None), ("target_recall", 0.9)):
        choice = select_threshold(scores, positive, criterion=criterion, target=target)
        assert choice.fallback and choice.threshold == 0.5
        assert word in choice.warning and "falls back to the default 0.5" in choice.warning
    assert word in caplog.text


def test_target_criteria_need_a_target() -> None:
    scores, positive = _scores()
    with pytest.raises(ValueError, match="needs a target"):
        select_threshold(scores, positive, criterion="target_recall")


def test_pixel_threshold_maximises_dice_over_all_pixels() -> None:
    rng = np.random.default_rng(2)
    histogram = PixelHistogram(bins=100)
    for _ in range(5):
        truth = rng.random((32, 32)) < 0.1
        probs = np.clip(np.where(truth, rng.normal(0.55, 0.1, truth.shape), rng.normal(0.2, 0.1, truth.shape)), 0, 1)
        histogram.update(probs, truth)
    choice = select_pixel_threshold(histogram, metric="dice")
    assert 0.3 < choice.threshold < 0.5  # between the two modes, well below the naive 0.5
    empty = PixelHistogram()
    empty.update(np.random.default_rng(3).random((8, 8)), np.zeros((8, 8), bool))
    fallback = select_pixel_threshold(empty)
    assert fallback.fallback and fallback.threshold == 0.5 and "no defect pixel" in fallback.warning


def test_min_area_removes_false_specks_and_keeps_real_regions() -> None:
    stats = RegionStats()
    truth = np.zeros((40, 40), bool)
    truth[10:20, 10:20] = True                  # one real 100-px defect
    predicted = truth.copy()
    for y, x in ((2, 2), (30, 5), (35, 35)):    # three false 1-px specks
        predicted[y, x] = True
    stats.update(predicted, truth)
    result = select_min_area(stats, [2, 4, 200])
    assert result["min_area"] == 2              # the smallest area that drops the specks
    scores = {row["min_area"]: row["dice"] for row in result["candidates"]}
    assert scores[2] == pytest.approx(1.0) and scores[0] < 1.0 and scores[200] == 0.0


def test_min_area_is_chosen_among_the_allowed_candidates_only() -> None:
    stats = RegionStats()
    truth = np.zeros((40, 40), bool)
    truth[10:20, 10:20] = True
    predicted = truth.copy()
    predicted[2, 2] = predicted[30, 5] = True
    stats.update(predicted, truth)
    assert select_min_area(stats, [2, 4], allowed=[0, 4])["min_area"] == 4   # 2 would be best, but is not allowed
    assert select_min_area(stats, [2, 4], allowed=[])["min_area"] == 0       # nothing allowed: keep every region
    assert len(select_min_area(stats, [2, 4], allowed=[0])["candidates"]) == 3  # every candidate is still reported


def _under_called_b(wrong: int) -> tuple[np.ndarray, np.ndarray]:
    """20 images of each of a, b, c (no defect-free class); ``wrong`` b images have b just under a, so the
    argmax calls them a and a lower threshold for b (0.4) would turn them right."""
    rows = [[0.8, 0.1, 0.1]] * 20 + [[0.45, 0.4, 0.15]] * wrong + [[0.1, 0.8, 0.1]] * (20 - wrong) + \
        [[0.1, 0.1, 0.8]] * 20
    return np.asarray(rows, dtype=np.float32), np.repeat([0, 1, 2], 20)


def test_per_class_thresholds_are_kept_only_when_their_gain_on_val_is_beyond_chance() -> None:
    labels = LabelSpace(("a", "b", "c"), has_good=False)
    # 15 of 20 b images turned right, none wrong: 15 > 2 x sqrt(15)
    per_class, report = select_class_thresholds(*_under_called_b(15), labels)
    assert report["used"] and per_class["b"] == pytest.approx(0.4)
    assert report["images_changed"] == {"better": 15, "worse": 0, "required_margin": pytest.approx(2 * 15 ** 0.5),
                                        "sigmas": 2.0}
    # 2 images turned right raise the macro F1 too, but 2 > 2 x sqrt(2) does not hold: the argmax stays
    per_class, report = select_class_thresholds(*_under_called_b(2), labels)
    f1 = report["val_macro_f1_among_defects"]
    assert f1["per_class_thresholds"] > f1["argmax"] and not report["used"] and per_class == {}
    # sigmas 0: any gain is kept (the rule before this check)
    assert select_class_thresholds(*_under_called_b(2), labels, sigmas=0.0)[1]["used"]
