"""Test-time flips and ensembles of model packages (different backbones and input sizes)."""

from __future__ import annotations

import numpy as np
import pytest

from defect_pipeline.ml.labels import LabelSpace
from defect_pipeline.ml.postprocess import Thresholds
from defect_pipeline.ml.predict import EnsemblePredictor, Predictor
from tests.conftest import make_tiny_package

LABELS = LabelSpace(("crack", "spot"), has_good=True)


@pytest.fixture(scope="module")
def resnet():
    return make_tiny_package(LABELS)


@pytest.fixture(scope="module")
def convnext():
    return make_tiny_package(LABELS, backbone="convnext_atto", image_size=96, seed=1)


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), rng.integers(0, 256, (50, 90, 3), dtype=np.uint8)]


def test_tta_equals_the_mean_of_the_flipped_predictions_flipped_back(resnet) -> None:
    plain, tta = Predictor(resnet), Predictor(resnet, tta=["hflip", "vflip"])
    for image in _images():
        views = plain.probabilities([image, image[:, ::-1], image[::-1]])
        expected_seg = (views[0].seg_probs + views[1].seg_probs[:, ::-1] + views[2].seg_probs[::-1]) / 3
        expected_cls = (views[0].class_probs + views[1].class_probs + views[2].class_probs) / 3
        (got,) = tta.probabilities([image])
        np.testing.assert_allclose(got.class_probs, expected_cls, atol=1e-6)
        np.testing.assert_allclose(got.seg_probs, expected_seg, atol=2e-5)
        assert not np.allclose(got.seg_probs, views[0].seg_probs, atol=1e-4)  # the flips did change something


def test_unknown_or_repeated_flips_are_refused(resnet) -> None:
    with pytest.raises(ValueError, match=r"unknown test-time augmentation \['rotate90'\]"):
        Predictor(resnet, tta=["rotate90"])
    with pytest.raises(ValueError, match="lists a flip twice"):
        Predictor(resnet, tta=["hflip", "hflip"])


def test_an_ensemble_of_two_backbones_averages_their_probabilities(resnet, convnext) -> None:
    a, b = Predictor(resnet), Predictor(convnext)
    ensemble = EnsemblePredictor([a, b], weights=[3, 1], thresholds=Thresholds(image=0.4))
    images = _images()
    for got, ra, rb in zip(ensemble.probabilities(images), a.probabilities(images), b.probabilities(images)):
        np.testing.assert_allclose(got.class_probs, 0.75 * ra.class_probs + 0.25 * rb.class_probs, atol=1e-7)
        np.testing.assert_allclose(got.seg_probs, 0.75 * ra.seg_probs + 0.25 * rb.seg_probs, atol=1e-7)
        assert got.seg_probs.shape[:2] == ra.seg_probs.shape[:2]  # at the image's own size
    assert [p.mask.shape for p in ensemble.predict(images)] == [(64, 64), (50, 90)]


def test_an_ensemble_labels_each_image_from_the_averaged_scores_at_its_own_threshold(resnet, convnext) -> None:
    """The label follows the weighted mean of the members' class probabilities and the ensemble's own
    image threshold, set between the two images' mean defect scores so that one image is "good" and
    the other the most probable defect class.

    The earlier check (``label == ("good" if score < 0.4 else label)``) compared a label with itself
    above the threshold; against an ensemble mutated to decide at the default 0.5 instead of its own
    threshold, the old check passed and this one fails.
    """
    a, b = Predictor(resnet), Predictor(convnext)
    images = _images()
    mean_probs = [0.75 * ra.class_probs + 0.25 * rb.class_probs
                  for ra, rb in zip(a.probabilities(images), b.probabilities(images))]
    scores = [1.0 - float(probs[0]) for probs in mean_probs]  # 1 - p(good)
    threshold = (scores[0] + scores[1]) / 2
    expected = ["good" if score < threshold else LABELS.defect_classes[int(np.argmax(probs[1:]))]
                for score, probs in zip(scores, mean_probs)]
    assert "good" in expected and set(expected) - {"good"}, "the setup must give one image of each kind"

    predictions = EnsemblePredictor([a, b], weights=[3, 1], thresholds=Thresholds(image=threshold)).predict(images)
    assert [p.label for p in predictions] == expected
    assert [p.defect_score for p in predictions] == pytest.approx(scores, abs=1e-6)


def test_members_with_other_classes_are_refused_naming_both(resnet) -> None:
    other = make_tiny_package(LabelSpace(("crack", "scratch"), has_good=True))
    with pytest.raises(ValueError, match=r"must predict the same classes: a.pt has \['good', 'crack', 'spot'\].*"
                                         r"b.pt has \['good', 'crack', 'scratch'\]"):
        EnsemblePredictor([Predictor(resnet), Predictor(other)], names=["a.pt", "b.pt"])
    with pytest.raises(ValueError, match="one non-negative number per member"):
        EnsemblePredictor([Predictor(resnet), Predictor(resnet)], weights=[1.0])
