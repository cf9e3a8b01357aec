"""The rules that keep the fixed operating point when tuning would not help (issue 15, item 6): the
chance spread of AUROC, the trivial operating points, the tolerance rule, and the exact streaming
confusions they are computed from."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from defect_pipeline.ml.labels import LabelSpace
from defect_pipeline.ml.metrics import MultitaskMetrics
from defect_pipeline.ml.postprocess import RawOutput, Thresholds, decide, decide_labels, remove_small_regions
from defect_pipeline.ml.threshold_checks import (
    AreaConfusion,
    CheckRules,
    Verdict,
    beats_trivial_image,
    checked_thresholds,
    criterion_value,
    image_signal,
    judge_image,
    judge_pixel,
    null_auroc_std,
    segmentation_scores,
    thresholds_status,
    trivial_image_points,
    within_tolerance,
)
from defect_pipeline.ml.thresholds import (
    PixelConfusion,
    PixelHistogram,
    ThresholdChoice,
    select_pixel_threshold,
    select_threshold,
)

ONE_CLASS = LabelSpace(("scratch",), has_good=True)
THREE_CLASSES = LabelSpace(("crack", "spot", "scratch"), has_good=True)


def _auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Mann-Whitney AUROC (no ties in continuous scores)."""
    ranks = np.argsort(np.argsort(scores)) + 1
    n_pos, n_neg = positive.sum(), (~positive).sum()
    return (ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _probs(defect_scores: np.ndarray) -> np.ndarray:
    """Class probabilities (good, scratch) whose defect score ``1 - p(good)`` is ``defect_scores``."""
    return np.stack([1.0 - defect_scores, defect_scores], axis=1)


def _scores(probs: np.ndarray) -> np.ndarray:
    """The defect score as tuning computes it (``1 - p(good)``, bit for bit)."""
    return 1.0 - probs[:, 0]


# ------------------------------------------------------------------------------------- the rules


def test_chance_spread_of_auroc_matches_random_scorers() -> None:
    assert null_auroc_std(4, 4) == pytest.approx(np.sqrt(12) / 16)  # var(U) = 4·4·9/12, AUROC = U / 16
    rng = np.random.default_rng(0)
    positive = np.arange(100) < 30
    simulated = np.std([_auroc(rng.random(100), positive) for _ in range(3000)])
    assert simulated == pytest.approx(null_auroc_std(30, 70), rel=0.08)
    with pytest.raises(ValueError, match="positives and negatives"):
        null_auroc_std(0, 5)


def test_signal_needs_an_auroc_beyond_chance_on_these_counts() -> None:
    rng = np.random.default_rng(1)
    targets = (np.arange(230) < 70).astype(int)  # 70 defect, 160 good: the size of the validation split
    noise = image_signal(_probs(rng.random(230)), targets, ONE_CLASS, sigmas=2.0)
    assert not noise["ok"] and abs(noise["auroc"] - 0.5) < noise["required"] - 0.5
    separated = image_signal(_probs(np.where(targets > 0, 0.5 + 0.5 * rng.random(230), 0.6 * rng.random(230))),
                             targets, ONE_CLASS, sigmas=2.0)
    assert separated["ok"] and separated["auroc"] > 0.9
    # perfect separation is signal on 4 + 4 images (chance 1/70), never on 3 + 1 (chance 1/4)
    assert image_signal(_probs(np.array([.9, .8, .7, .6, .4, .3, .2, .1])), np.array([1] * 4 + [0] * 4), ONE_CLASS,
                        sigmas=2.0)["ok"]
    assert not image_signal(_probs(np.array([.9, .8, .7, .1])), np.array([1, 1, 1, 0]), ONE_CLASS, sigmas=2.0)["ok"]
    # a constant model (collapsed: one answer for every image) has AUROC 0.5
    flat = image_signal(_probs(np.full(230, 0.2)), targets, ONE_CLASS, sigmas=0.0)
    assert flat["auroc"] == pytest.approx(0.5) and not flat["ok"]


def test_signal_without_a_good_class_is_macro_one_vs_rest() -> None:
    labels = LabelSpace(("crack", "spot"), has_good=False)
    targets = np.array([0] * 20 + [1] * 20)
    right = np.where(targets[:, None] == np.arange(2)[None], 0.8, 0.2)
    signal = image_signal(right, targets, labels, sigmas=2.0)
    assert signal["ok"] and signal["auroc"] == pytest.approx(1.0) and "macro" in signal["kind"]
    assert not image_signal(right[::-1], targets, labels, sigmas=2.0)["ok"]  # anti-correlated is no usable signal


def test_trivial_points_and_the_criterion_they_score() -> None:
    points = trivial_image_points(positives=30, negatives=70)
    assert points["all_defect"]["f1"] == pytest.approx(60 / 130) and points["all_good"]["f1"] == 0.0
    assert criterion_value(points["all_defect"], "max_f1", None) == pytest.approx(60 / 130)
    # calling every image a defect misses a 5 % false-alarm target; calling none reaches it with recall 0
    assert criterion_value(points["all_defect"], "target_false_alarm_rate", 0.05) is None
    assert criterion_value(points["all_good"], "target_false_alarm_rate", 0.05) == 0.0
    # ... and for a recall target it is the other way round
    assert criterion_value(points["all_defect"], "target_recall", 0.95) == 0.0
    assert criterion_value(points["all_good"], "target_recall", 0.95) is None
    with pytest.raises(ValueError, match="unknown threshold criterion"):
        criterion_value(points["all_good"], "max_accuracy", None)


def test_max_f1_that_calls_every_image_a_defect_does_not_beat_the_trivial_point() -> None:
    positive = np.arange(200) < 60
    # defects scored lowest: the best F1 is at the lowest threshold, i.e. every image a defect
    reversed_ = select_threshold(np.linspace(0, 1, 200), positive)
    assert reversed_.recall == 1.0 and reversed_.false_alarm_rate == 1.0
    trivial = beats_trivial_image(reversed_, "max_f1", None)
    assert not trivial["ok"] and trivial["tuned"] == pytest.approx(trivial["trivial"]["all_defect"])
    constant = select_threshold(np.full(200, 0.3), positive)  # a collapsed model: one score for all
    assert not beats_trivial_image(constant, "max_f1", None)["ok"]
    separated = select_threshold(np.where(positive, 0.8, 0.2), positive)
    assert beats_trivial_image(separated, "max_f1", None)["ok"]
    recall_point = select_threshold(np.where(positive, 0.8, 0.2), positive, criterion="target_recall", target=0.95)
    assert beats_trivial_image(recall_point, "target_recall", 0.95)["ok"]
    reached_by_all = select_threshold(np.linspace(0, 1, 200), positive, criterion="target_recall", target=1.0)
    assert not beats_trivial_image(reached_by_all, "target_recall", 1.0)["ok"]


def test_tolerance_rule_allows_exactly_the_set_drop() -> None:
    assert within_tolerance(0.64, 0.66, 0.02)       # a drop of exactly the tolerance passes
    assert not within_tolerance(0.6399, 0.66, 0.02)
    assert within_tolerance(0.70, 0.66, 0.0)        # a gain always passes
    assert not within_tolerance(0.6599, 0.66, 0.0)  # tolerance 0: never lower
    assert within_tolerance(0.14, 0.66, 1.0)        # tolerance 1: no limit


def test_rules_refuse_out_of_range_values_by_parameter_name() -> None:
    with pytest.raises(ValueError, match="thresholds.max_accuracy_drop must be within"):
        CheckRules(max_accuracy_drop=1.5)
    with pytest.raises(ValueError, match="thresholds.signal_sigmas must be >= 0"):
        CheckRules(signal_sigmas=-1)


# ------------------------------------------------------------------------------- image verdicts


def _accuracy_trade() -> tuple[np.ndarray, np.ndarray]:
    """100 images: max F1 moves the threshold from 0.5 to 0.45, catching 5 more defects for 8 more false
    alarms: F1 0.667 → 0.714, accuracy 0.95 → 0.92."""
    defect = np.array([0.6] * 5 + [0.45] * 5 + [0.45] * 8 + [0.1] * 82)
    targets = np.array([1] * 10 + [0] * 90)
    return _probs(defect), targets


def test_an_image_threshold_that_costs_more_accuracy_than_the_tolerance_is_refused() -> None:
    probs, targets = _accuracy_trade()
    choice = select_threshold(_scores(probs), targets > 0)
    assert choice.threshold == pytest.approx(0.45) and choice.f1 == pytest.approx(20 / 28)
    verdict = judge_image(probs, targets, ONE_CLASS, choice, {}, criterion="max_f1", target=None,
                          rules=CheckRules())
    assert not verdict.use_tuned and verdict.reason == "accuracy_drop"
    assert verdict.checks["accuracy"]["fixed"] == pytest.approx(0.95)
    assert verdict.checks["accuracy"]["tuned"] == pytest.approx(0.92)
    assert verdict.checks["signal"]["ok"] and verdict.checks["trivial"]["ok"]  # only the accuracy check fails
    assert "0.950 to 0.920" in verdict.message and "thresholds.max_accuracy_drop" in verdict.message
    looser = judge_image(probs, targets, ONE_CLASS, choice, {}, criterion="max_f1", target=None,
                         rules=CheckRules(max_accuracy_drop=0.05))
    assert looser.use_tuned and looser.reason is None


def test_image_verdict_reports_the_first_failing_check_and_every_value() -> None:
    rng = np.random.default_rng(4)
    targets = (np.arange(230) < 70).astype(int)
    scores = rng.random(230)
    choice = select_threshold(scores, targets > 0)
    verdict = judge_image(_probs(scores), targets, ONE_CLASS, choice, {}, criterion="max_f1", target=None,
                          rules=CheckRules())
    assert not verdict.use_tuned and verdict.reason == "no_signal"
    assert {"signal", "accuracy", "trivial"} <= set(verdict.checks)
    assert "70 defect / 160 good images" in verdict.message
    one_sided = select_threshold(scores, np.ones(230, bool))
    assert judge_image(_probs(scores), np.ones(230, int), ONE_CLASS, one_sided, {}, criterion="max_f1",
                       target=None, rules=CheckRules()).reason == "cannot_tune"


def test_decide_labels_is_the_image_rule_of_decide() -> None:
    rng = np.random.default_rng(5)
    probs = rng.dirichlet(np.ones(4), size=200)
    seg = np.zeros((2, 2, 4))
    for thresholds in (Thresholds(), Thresholds(image=0.7), Thresholds(image=0.2, per_class={"crack": 0.2,
                                                                                            "spot": 0.9})):
        labels = decide_labels(probs, THREE_CLASSES, thresholds)
        expected = [THREE_CLASSES.image_index(decide(RawOutput(p, seg), THREE_CLASSES, thresholds).label)
                    for p in probs]
        assert labels.tolist() == expected


# ------------------------------------------------------------------------------- pixel verdicts


def _pixel_case(seed: int = 6) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Four 24x24 images with a 4x4 defect (class 1 or 2) and 4-channel probabilities."""
    rng = np.random.default_rng(seed)
    masks, probs = [], []
    for i in range(4):
        mask = np.zeros((24, 24), np.int64)
        mask[5:9, 5:9] = 1 + i % 2
        p = rng.dirichlet(np.ones(3) * 0.7, size=(24, 24))
        masks.append(mask)
        probs.append(p)
    return masks, probs


def test_pixel_confusion_is_the_confusion_of_decided_masks_at_every_threshold() -> None:
    labels = LabelSpace(("a", "b"))
    masks, probs = _pixel_case()
    confusion = PixelConfusion(3)
    histogram = PixelHistogram()
    for mask, p in zip(masks, probs, strict=True):
        raw = RawOutput(np.array([0.5, 0.3, 0.2]), p)
        confusion.update(raw.defect_pixel_probs, mask, raw.defect_class_map)
        histogram.update(raw.defect_pixel_probs, mask > 0)
    for threshold in (0.0, 0.25, 0.5, 0.735, 1.0):
        metrics = MultitaskMetrics(labels)
        for mask, p in zip(masks, probs, strict=True):
            decided = decide(RawOutput(np.array([0.5, 0.3, 0.2]), p), labels, Thresholds(pixel=threshold)).mask
            metrics.update_predictions(torch.from_numpy(decided.astype(np.int64))[None], torch.tensor([0]),
                                       torch.from_numpy(mask)[None], torch.tensor([0]))
        expected = metrics.confusion_matrices()["seg"].numpy()
        np.testing.assert_array_equal(confusion.confusion_at(threshold), expected)
        assert segmentation_scores(expected)["miou"] == pytest.approx(metrics.compute()["miou"])
    np.testing.assert_array_equal(confusion.histogram().positive, histogram.positive)
    np.testing.assert_array_equal(confusion.histogram().negative, histogram.negative)
    with pytest.raises(ValueError, match="class indices 0..2"):
        confusion.update(np.zeros((2, 2)), np.full((2, 2), 255), np.ones((2, 2)))


def _pixel_confusion(defect_prob: float, noise_prob: float, noise_pixels: int) -> PixelConfusion:
    """1000 background pixels, 10 defect pixels at ``defect_prob``, ``noise_pixels`` background ones at
    ``noise_prob``, the rest at 0."""
    probs = np.zeros(1010)
    truth = np.zeros(1010, np.int64)
    truth[:10], probs[:10] = 1, defect_prob
    probs[10:10 + noise_pixels] = noise_prob
    confusion = PixelConfusion(2)
    confusion.update(probs, truth, np.ones(1010, np.int64))
    return confusion


def test_a_pixel_threshold_that_costs_more_miou_than_the_tolerance_is_refused() -> None:
    # defects at 0.3 hide below 300 background pixels at 0.35: Dice 0.0625 beats calling every pixel a
    # defect (0.0196), but background IoU falls from 0.99 to 0.70
    confusion = _pixel_confusion(0.3, 0.35, 300)
    choice = select_pixel_threshold(confusion.histogram())
    verdict = judge_pixel(confusion, choice, metric="dice", rules=CheckRules())
    assert verdict.checks["trivial"]["ok"] and not verdict.use_tuned and verdict.reason == "miou_drop"
    assert verdict.checks["miou"]["fixed"] == pytest.approx(0.5 * 1000 / 1010)
    assert verdict.checks["miou"]["tuned"] == pytest.approx(0.5 * (700 / 1000 + 10 / 310))
    # with 30 noise pixels the same move gains mIoU: tuned
    assert judge_pixel(_pixel_confusion(0.3, 0.35, 30), select_pixel_threshold(_pixel_confusion(0.3, 0.35, 30)
                                                                                .histogram()),
                       metric="dice", rules=CheckRules()).use_tuned


def test_a_collapsed_pixel_output_does_not_beat_calling_every_pixel_a_defect() -> None:
    confusion = _pixel_confusion(0.02, 0.02, 1000)  # every pixel at 0.02: any threshold below calls all defect
    choice = select_pixel_threshold(confusion.histogram())
    verdict = judge_pixel(confusion, choice, metric="dice", rules=CheckRules(max_miou_drop=1.0))
    assert not verdict.use_tuned and verdict.reason == "not_better_than_trivial"
    assert "all_defect" in verdict.message
    fell_back = ThresholdChoice(0.5, "max_dice", fallback=True, warning="no defect pixel")
    assert judge_pixel(confusion, fell_back, metric="dice", rules=CheckRules()).reason == "cannot_tune"


def test_area_confusion_matches_masks_with_small_regions_removed() -> None:
    rng = np.random.default_rng(7)
    predicted = (rng.random((30, 30)) < 0.08).astype(np.int64) * rng.integers(1, 3, (30, 30))
    predicted[10:16, 10:16] = 2
    truth = np.zeros((30, 30), np.int64)
    truth[9:15, 9:15] = 2
    areas = AreaConfusion([4, 16], 3)
    areas.update(predicted, truth)
    for candidate in (0, 4, 16):
        kept = remove_small_regions(predicted.astype(np.uint8), candidate).astype(np.int64)
        expected = np.bincount((truth * 3 + kept).reshape(-1), minlength=9).reshape(3, 3)
        np.testing.assert_array_equal(areas.matrices[candidate], expected)
    assert areas.miou()[16] > areas.miou()[0]  # removing the specks helps here


# --------------------------------------------------------------------------------- the outcome


def test_status_and_source_say_which_part_kept_its_fixed_value() -> None:
    image = ThresholdChoice(0.15, "max_f1")
    pixel = ThresholdChoice(0.3, "max_dice")
    kept = Verdict("image", False, "no_signal", "no signal: image AUROC 0.530 ...")
    used = Verdict("pixel", True)
    thresholds, status = checked_thresholds(image, pixel, {"crack": 0.4}, 8, {"image": kept, "pixel": used},
                                            base="tuned on 9 'val' images (image: max_f1, pixel: max dice)")
    assert status == "kept_fixed:image_no_signal"
    assert (thresholds.image, thresholds.per_class, thresholds.pixel, thresholds.min_area) == (0.5, {}, 0.3, 8)
    assert thresholds.source.startswith("tuned on 9 'val' images") and "image kept at the fixed value" in \
        thresholds.source
    both = {"image": kept, "pixel": Verdict("pixel", False, "miou_drop", "mIoU would fall")}
    thresholds, status = checked_thresholds(image, pixel, {}, 8, both, base="tuned on 9 'val' images (...)")
    assert status == "kept_fixed:image_no_signal,pixel_miou_drop"
    assert thresholds == Thresholds(source=thresholds.source) and thresholds.source.startswith("fixed: 0.5 / 0.5 / 0 px")
    assert thresholds_status([Verdict("image", True), used]) == "tuned"
