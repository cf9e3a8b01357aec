"""Preview rendering: masks overlaid on images, and the grid of augmented samples.

:func:`overlay_mask` blends each defect class of a mask into an RGB image in its own colour (used
by the evaluation report and the inference overlays); :func:`render_preview` draws a grid of
samples, each as read and then through a transform several times, with their masks outlined, for
the ``augmentation`` node's preview PNG. Colours are stable per class index (tab10, tab20, then
a hue wheel). Figures are built without pyplot state, so they can be saved from any thread.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Patch

__all__ = ["class_colour", "overlay_mask", "render_preview"]


def class_colour(index: int) -> tuple[float, float, float]:
    """Colour of segmentation class ``index`` (>= 1): tab10, then tab20, then a hue wheel."""
    from matplotlib import colormaps

    if index <= 10:
        return tuple(colormaps["tab10"](index - 1)[:3])
    if index <= 30:
        return tuple(colormaps["tab20"]((index - 11) % 20)[:3])
    return to_rgb(colormaps["hsv"]((index * 0.618034) % 1.0))


def _to_display_image(image: Any) -> np.ndarray:
    """A transform's output image as ``(H, W, 3)`` for imshow (tensors and floats handled)."""
    if hasattr(image, "detach"):  # torch tensor (C, H, W)
        image = image.detach().cpu().numpy()
        if image.ndim == 3:
            image = np.transpose(image, (1, 2, 0))
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.dtype == np.uint8:
        return image
    image = image.astype(np.float64)
    low, high = float(image.min(initial=0.0)), float(image.max(initial=1.0))
    if low >= 0.0 and high <= 1.0:
        return image
    return (image - low) / (high - low) if high > low else np.zeros_like(image)


def _to_display_mask(mask: Any, shape: tuple[int, int]) -> np.ndarray:
    if mask is None:
        return np.zeros(shape, dtype=np.int64)
    if hasattr(mask, "detach"):
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask)
    if mask.ndim == 3:
        mask = mask[..., 0] if mask.shape[-1] == 1 else mask[0]
    return mask.astype(np.int64)


def overlay_mask(image: np.ndarray, mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """``(H, W, 3)`` uint8 image with each defect class of ``mask`` blended in its colour."""
    out = np.asarray(image, dtype=np.float64).copy()
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=2)
    mask = np.asarray(mask)
    for c in (int(c) for c in np.unique(mask) if c > 0):
        colour = np.asarray(class_colour(c)) * 255.0
        out[mask == c] = (1.0 - alpha) * out[mask == c] + alpha * colour
    return np.clip(out, 0, 255).astype(np.uint8)


def _draw(ax: Any, image: np.ndarray, mask: np.ndarray, alpha: float) -> None:
    ax.imshow(image, interpolation="nearest")
    classes = [int(c) for c in np.unique(mask) if c > 0]
    if classes:
        overlay = np.zeros(mask.shape + (4,), dtype=np.float64)
        for c in classes:
            overlay[mask == c] = (*class_colour(c), alpha)
        ax.imshow(overlay, interpolation="nearest")
        for c in classes:
            region = (mask == c).astype(np.float64)
            if 0 < region.sum() < region.size:
                ax.contour(region, levels=[0.5], colors=[class_colour(c)], linewidths=0.8)
    ax.set_xticks([])
    ax.set_yticks([])


def render_preview(
    samples: Sequence[tuple[np.ndarray, np.ndarray | None]],
    transform: Any,
    *,
    views: int,
    seed: int,
    class_names: Sequence[str] | None = None,
    titles: Sequence[str] | None = None,
    alpha: float = 0.45,
    cell_inches: float = 2.0,
) -> Figure:
    """A grid of ``len(samples)`` rows x ``1 + views`` columns: each sample as read, then augmented.

    ``samples`` are ``(image (H, W, 3) uint8, mask (H, W) class indices or None)`` pairs, e.g. from
    :meth:`ManifestDataset.read_sample`; ``transform`` should be the display variant
    (``build_transform(recipe, ..., train=True, for_display=True)``) — normalised or tensor outputs
    are shown rescaled. Masks are overlaid in a semi-transparent colour per class index with an
    outline; ``class_names`` (segmentation classes, index 0 = background) adds a legend and
    ``titles`` labels the rows. A deep copy of ``transform`` is reseeded with ``seed``, so the same
    seed draws the same figure and the caller's transform keeps its random state. Returns a
    ``matplotlib.figure.Figure`` (no pyplot state; ``fig.savefig`` works). No samples gives a
    one-axis figure saying so.
    """
    if views < 0:
        raise ValueError(f"views must be >= 0, got {views}")
    samples = list(samples)
    if not samples:
        fig = Figure(figsize=(4, 1.5))
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no samples to preview", ha="center", va="center")
        ax.set_axis_off()
        return fig
    if titles is not None and len(titles) != len(samples):
        raise ValueError(f"titles has {len(titles)} entries for {len(samples)} samples")

    view_transform = transform
    if transform is not None:
        try:
            view_transform = copy.deepcopy(transform)
        except Exception:  # noqa: BLE001 - an uncopyable callable is used as it is
            view_transform = transform
        if hasattr(view_transform, "set_random_seed"):
            view_transform.set_random_seed(int(seed))
    columns = 1 + (views if transform is not None else 0)

    fig = Figure(figsize=(cell_inches * columns, cell_inches * len(samples) + 0.4), layout="constrained")
    axes = fig.subplots(len(samples), columns, squeeze=False)
    present: set[int] = set()
    for row, (image, mask) in enumerate(samples):
        image = np.asarray(image)
        base_mask = _to_display_mask(mask, image.shape[:2])
        present.update(int(c) for c in np.unique(base_mask) if c > 0)
        _draw(axes[row][0], _to_display_image(image), base_mask, alpha)
        if titles is not None:
            axes[row][0].set_ylabel(str(titles[row]), fontsize=8)
        for view in range(1, columns):
            if mask is None:
                out = view_transform(image=image, mask=np.zeros(image.shape[:2], dtype=np.uint8))
            else:
                out = view_transform(image=image, mask=np.asarray(mask))
            shown = _to_display_image(out["image"])
            shown_mask = _to_display_mask(out.get("mask"), shown.shape[:2])
            present.update(int(c) for c in np.unique(shown_mask) if c > 0)
            _draw(axes[row][view], shown, shown_mask, alpha)
    axes[0][0].set_title("original", fontsize=9)
    for view in range(1, columns):
        axes[0][view].set_title(f"augmented {view}", fontsize=9)
    if class_names is not None and present:
        handles = [
            Patch(facecolor=class_colour(c), alpha=max(alpha, 0.6),
                  label=class_names[c] if c < len(class_names) else f"class {c}")
            for c in sorted(present)
        ]
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6), fontsize=8,
                   frameon=False)
    return fig
