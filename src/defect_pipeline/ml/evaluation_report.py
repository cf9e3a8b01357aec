"""The evaluation's report: ``report.md`` and the figures a person looks at.

:func:`render_evaluation_markdown` writes the metric table (fixed vs tuned thresholds), the
confusion matrices at the tuned point (image classes as counts with row percentages, pixels as
row percentages with the pixel count of each true class) and the worst predictions. The figures:
:func:`plot_confusion` (image classes: counts next to the row-normalised matrix, for both
operating points), :func:`plot_pixel_confusion` (the same for pixels, the segmentation classes),
:func:`plot_per_class_metrics` (F1 per image class and IoU per segmentation class as bars, fixed
vs tuned), :func:`plot_curves` (PR and ROC) and :func:`plot_gallery` (the worst predictions).

Row-normalised means each row (a true class) divided by its total: the diagonal is that class's
recall, and a class the split does not contain has an empty row (``NaN``, drawn as "–"). Figures
are built without pyplot state, so they can be saved from any thread.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from defect_pipeline.markdown import markdown_table

POINTS = {"fixed": "fixed 0.5", "thresholded": "tuned"}  # summary key of an operating point → its name


def normalize_confusion(matrix: Any) -> np.ndarray:
    """Each row (a true class) divided by its total, as floats; a row without samples is all NaN."""
    counts = np.asarray(matrix, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"a confusion matrix is square (true x predicted), got shape {counts.shape}")
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, counts / np.where(totals > 0, totals, 1.0), np.nan)


def _compact(count: float) -> str:
    """A count in a few characters: 950, 12.3k, 4.5M."""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(count) >= size:
            return f"{count / size:.3g}{suffix}"
    return f"{int(count)}"


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _confusion_markdown(block: dict[str, Any], point: str, *, counts: bool) -> str:
    """One operating point's matrix as a table: ``n (p %)`` cells (``counts``), or ``p %`` with row totals."""
    classes, matrix = block["classes"], np.asarray(block[point], dtype=np.float64)
    share = normalize_confusion(matrix)
    rows = []
    for name, row, fractions in zip(classes, matrix, share, strict=True):
        cells = [("–" if math.isnan(f) else f"{100 * f:.1f} %") if not counts else
                 (f"{int(n)} (–)" if math.isnan(f) else f"{int(n)} ({100 * f:.0f} %)")
                 for n, f in zip(row, fractions, strict=True)]
        rows.append([name, *cells, _compact(row.sum())])
    return markdown_table(["true \\ predicted", *classes, "total"], rows)


def render_evaluation_markdown(summary: dict[str, Any], *, model: dict[str, Any]) -> str:
    """``report.md``: what was evaluated, the metric table, confusion matrices and the worst predictions."""
    fixed, tuned = summary["final_metrics_fixed"], summary["final_metrics_thresholded"]
    keys = [k for k in fixed if not k.startswith(("f1/", "iou/")) and k != "image_auroc_kind"]
    keys += [k for k in fixed if k.startswith(("f1/", "iou/"))]
    t = summary["thresholds_tuned"]
    lines = [f"# Evaluation on the `{summary['split']}` split ({summary['samples']} images)", "",
             f"Model: `{model.get('backbone')}` from {model.get('stage') or model.get('source_checkpoint')} "
             f"(weights sha256 `{str(model.get('weights_sha256', ''))[:12]}`, MLflow run "
             f"`{model.get('mlflow_run_id') or '–'}`)"
             + (f"; test-time flips {', '.join(model['tta'])} averaged with the plain view" if model.get("tta") else "")
             + ".", "",
             f"Tuned thresholds: image {t['image']:.3f}, pixel {t['pixel']:.3f}, min area {t['min_area']} px"
             + (f", per class {', '.join(f'{k} {v:.3f}' for k, v in t['per_class'].items())}" if t["per_class"] else "")
             + f" ({t['source']}). Fixed: 0.5 / 0.5 / 0 px.", ""]
    lines += [f"> {note}" for note in summary.get("notes", [])]
    lines += ["", markdown_table(["metric", "fixed (0.5)", "tuned", "tuned − fixed"],
                                 [[k, _fmt(fixed[k]), _fmt(tuned[k]),
                                   _fmt(summary["difference_thresholded_minus_fixed"].get(k))] for k in keys]), ""]
    lines += [f"AUROC/AP: {fixed.get('image_auroc_kind', '')}; they do not depend on thresholds.", ""]
    matrices = summary.get("confusion_matrices")
    if matrices:
        lines += ["## Confusion matrices (tuned thresholds)", "",
                  "Rows: true class, columns: predicted class; a row's percentages sum to 100 % (the diagonal is "
                  "that class's recall). `confusion_matrix.png` and `pixel_confusion_matrix.png` show both "
                  "operating points.", "", "Images (count and row %):", "",
                  _confusion_markdown(matrices["image"], "thresholded", counts=True), "",
                  "Pixels (row %; total: pixels of the true class):", "",
                  _confusion_markdown(matrices["pixel"], "thresholded", counts=False), ""]
    lines += ["## Worst predictions (tuned thresholds)", ""]
    lines.append(markdown_table(["sample", "label", "predicted", "badness (1 − Dice + wrong label)"],
                                [[w["sample_id"], w["label"], w["predicted"], w["badness"]]
                                 for w in summary["worst"]]) if summary["worst"] else "None.")
    return "\n".join(lines) + "\n"


def _draw_matrix(ax: Any, matrix: np.ndarray, classes: Sequence[str], title: str, *, normalised: bool) -> None:
    values = normalize_confusion(matrix) if normalised else np.asarray(matrix, dtype=np.float64)
    shown = np.nan_to_num(values, nan=0.0)
    ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=1.0 if normalised else max(float(shown.max()), 1.0))
    ticks = range(len(classes))
    ax.set(xticks=ticks, yticks=ticks, xlabel="predicted", ylabel="true", title=title)
    ax.set_xticklabels(classes, rotation=30, ha="right")
    ax.set_yticklabels(classes)
    high = 0.5 if normalised else float(shown.max()) / 2
    for (row, col), value in np.ndenumerate(values):
        text = "–" if math.isnan(value) else (f"{value:.2f}" if normalised else _compact(value))
        ax.text(col, row, text, ha="center", va="center", fontsize=8,
                color="white" if not math.isnan(value) and value > high else "black")


def _plot_matrices(confusion: dict[str, np.ndarray], classes: Sequence[str], what: str) -> Figure:
    """One row per operating point: counts | row-normalised."""
    size = 2.2 + 0.55 * len(classes)
    figure = Figure(figsize=(2 * size + 1.0, size * len(confusion)), layout="constrained")
    axes = figure.subplots(len(confusion), 2, squeeze=False)
    for (counts_ax, share_ax), (point, matrix) in zip(axes, confusion.items(), strict=True):
        name = POINTS.get(point, point)
        _draw_matrix(counts_ax, matrix, classes, f"{what} ({name}): counts", normalised=False)
        _draw_matrix(share_ax, matrix, classes, f"{what} ({name}): row-normalised", normalised=True)
    return figure


def plot_confusion(confusion: dict[str, np.ndarray], classes: Sequence[str]) -> Figure:
    """Image classes: counts next to the row-normalised matrix, one row per operating point."""
    return _plot_matrices(confusion, classes, "images")


def plot_pixel_confusion(confusion: dict[str, np.ndarray], classes: Sequence[str]) -> Figure:
    """Pixels (segmentation classes, background first): counts next to the row-normalised matrix."""
    return _plot_matrices(confusion, classes, "pixels")


def plot_per_class_metrics(summary: dict[str, Any]) -> Figure:
    """F1 per image class and IoU per segmentation class, fixed vs tuned thresholds, as grouped bars."""
    figure = Figure(figsize=(12, 4.2), layout="constrained")
    axes = figure.subplots(1, 2)
    for ax, prefix, title in zip(axes, ("f1/", "iou/"), ("F1 per image class", "IoU per segmentation class")):
        names = [k.removeprefix(prefix) for k in summary["final_metrics_fixed"] if k.startswith(prefix)]
        positions = np.arange(len(names))
        width = 0.8 / len(POINTS)
        for offset, (point, label) in enumerate(POINTS.items()):
            metrics = summary[f"final_metrics_{point}"]
            values = [float(metrics[prefix + name]) for name in names]
            bars = ax.bar(positions + (offset - (len(POINTS) - 1) / 2) * width, values, width, label=label)
            ax.bar_label(bars, fmt="%.2f", fontsize=7)
        ax.set_xticks(positions)
        ax.set_xticklabels(names, rotation=30, ha="right")
        ax.set(title=title, ylim=(0, 1.1), ylabel=prefix.rstrip("/"))
        ax.legend(fontsize=8)
    return figure


def plot_curves(curves: dict[str, Any]) -> Figure:
    figure = Figure(figsize=(11, 4.5))
    pr_ax, roc_ax = figure.subplots(1, 2)
    for name, curve in curves.items():
        pr_ax.plot(curve["recall"], curve["precision"], label=name)
        roc_ax.plot(curve["fpr"], curve["tpr"], label=name)
    pr_ax.set(title="precision-recall", xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02))
    roc_ax.set(title="ROC", xlabel="false-alarm rate", ylabel="recall", xlim=(0, 1.02), ylim=(0, 1.02))
    if curves:
        pr_ax.legend()
        roc_ax.legend()
    else:
        pr_ax.text(0.5, 0.5, "undefined: one class only", ha="center")
    figure.tight_layout()
    return figure


def plot_gallery(dataset: Any, worst: list[dict[str, Any]]) -> Figure:
    """Rows of image | ground truth | prediction, masks overlaid (``dataset``: a ManifestDataset)."""
    from defect_pipeline.ml.preview import overlay_mask

    rows = max(len(worst), 1)
    figure = Figure(figsize=(9, 3 * rows))
    axes = figure.subplots(rows, 3, squeeze=False)
    for row, item in zip(axes, worst):
        image, truth = dataset.read_sample(item["index"])
        for ax, (title, mask) in zip(row, (("image", None), (f"truth: {item['label']}", truth),
                                           (f"predicted: {item['predicted']}", item["mask"]))):
            ax.imshow(image if mask is None else overlay_mask(image, mask))
            ax.set_title(f"{item['sample_id']}" if mask is None else title, fontsize=8)
            ax.set_axis_off()
    if not worst:
        axes[0][0].text(0.5, 0.5, "no images", ha="center")
    figure.tight_layout()
    return figure
