"""The evaluation report's confusion matrices (counts and row-normalised, images and pixels) and per-class bars,
on the controlled model of test_evaluation: the numbers drawn are the numbers the metrics came from.

Written against the code before the change, these fail: there was no row-normalised matrix, no pixel
matrix in the summary or as a figure, and no per-class chart (ImportError / KeyError)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from defect_pipeline.ml.evaluation import evaluate_split
from defect_pipeline.ml.evaluation_report import (
    normalize_confusion,
    plot_confusion,
    plot_per_class_metrics,
    plot_pixel_confusion,
    render_evaluation_markdown,
)
from defect_pipeline.ml.postprocess import Thresholds
from tests.ml.test_evaluation import SIZE, Samples, UnderConfidentModel


def test_rows_are_divided_by_their_totals_and_an_empty_row_stays_empty() -> None:
    share = normalize_confusion([[3, 1, 0], [0, 0, 0], [2, 2, 4]])
    assert share[0].tolist() == [0.75, 0.25, 0.0] and share[2].tolist() == [0.25, 0.25, 0.5]
    assert all(math.isnan(v) for v in share[1])  # a class the split does not hold: no recall to show
    with pytest.raises(ValueError, match="square"):
        normalize_confusion([[1, 2, 3]])


@pytest.fixture(scope="module")
def evaluated():
    tuned = Thresholds(image=0.3, pixel=0.3, min_area=2, source="tuned in the test")
    return evaluate_split(Samples(), UnderConfidentModel(), tuned=tuned, worst_k=2, batch_size=4)


def test_the_summary_holds_both_confusion_matrices_at_both_points(evaluated) -> None:
    matrices = evaluated.summary["confusion_matrices"]
    assert matrices["image"]["classes"] == ["good", "scratch", "spot"]
    assert matrices["pixel"]["classes"] == ["background", "scratch", "spot"]
    # at 0.5 every image is called good; at the tuned point every image is right
    assert matrices["image"]["fixed"] == [[4, 0, 0], [2, 0, 0], [2, 0, 0]]
    assert matrices["image"]["thresholded"] == [[4, 0, 0], [0, 2, 0], [0, 0, 2]]
    pixels = np.asarray(matrices["pixel"]["thresholded"])
    assert pixels.sum() == 8 * SIZE * SIZE  # every pixel of the 8 images, at their own size
    assert pixels[1, 1] == pixels[2, 2] == 2 * 36 and pixels[1:, 0].sum() == 0  # the 6x6 squares found
    assert np.asarray(matrices["pixel"]["fixed"])[1:, 1:].sum() == 0  # no defect pixel at 0.5
    assert (evaluated.pixel_confusion["thresholded"] == pixels).all()


def test_the_report_shows_counts_with_row_shares_and_pixel_shares(evaluated) -> None:
    markdown = render_evaluation_markdown(evaluated.summary, model={"backbone": "x", "stage": "stage3"})
    assert "## Confusion matrices (tuned thresholds)" in markdown
    assert "| scratch | 0 (0 %) | 2 (100 %) | 0 (0 %) | 2 |" in markdown
    assert "| spot | 0.0 % | 0.0 % | 100.0 % | 72 |" in markdown  # pixels: 2 images x 36 spot pixels


def _texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def test_the_figures_put_the_normalised_matrix_next_to_the_counts(evaluated) -> None:
    figure = plot_confusion(evaluated.confusion, ("good", "scratch", "spot"))
    axes = figure.get_axes()
    assert [ax.get_title() for ax in axes] == ["images (fixed 0.5): counts", "images (fixed 0.5): row-normalised",
                                              "images (tuned): counts", "images (tuned): row-normalised"]
    assert _texts(axes[0])[:3] == ["4", "0", "0"] and _texts(axes[1])[3:6] == ["1.00", "0.00", "0.00"]
    pixel = plot_pixel_confusion(evaluated.pixel_confusion, ("background", "scratch", "spot"))
    counts, share = pixel.get_axes()[2:4]
    assert _texts(counts)[4] == "72" and _texts(share)[4] == "1.00"
    # 8 x 256 pixels less 4 x 36 defect pixels are background; the one-pixel specks fall below min_area 2
    assert _texts(counts)[0] == "1.9k"


def test_the_per_class_chart_draws_each_metric_for_both_points(evaluated) -> None:
    summary = evaluated.summary
    f1_ax, iou_ax = plot_per_class_metrics(summary).get_axes()
    heights = [bar.get_height() for bar in f1_ax.patches]
    fixed, tuned = summary["final_metrics_fixed"], summary["final_metrics_thresholded"]
    assert heights == pytest.approx([fixed[f"f1/{c}"] for c in ("good", "scratch", "spot")]
                                    + [tuned[f"f1/{c}"] for c in ("good", "scratch", "spot")])
    assert [t.get_text() for t in iou_ax.get_xticklabels()] == ["background", "scratch", "spot"]
    assert [bar.get_height() for bar in iou_ax.patches][3:] == pytest.approx(
        [tuned[f"iou/{c}"] for c in ("background", "scratch", "spot")])
