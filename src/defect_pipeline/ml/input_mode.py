"""Whole images resized, or crops at native scale: what ``model.input_mode: auto`` resolves to.

Resizing a 600 x 400 image to 224 x 224 shrinks it 2.7 times along its width, and a crack one or
two pixels wide all but disappears; a 4000 x 3000 factory image shrinks 18 times. Training on
``image_size x image_size`` crops at the image's own scale keeps such defects as wide as they are
(prediction then slides a window over the whole image). For images near the input size, resizing
keeps the whole image in view and costs nothing, so it stays the choice there.

:func:`input_facts` reads the numbers the rule needs from the manifest (no image is opened): the
median width and height of the accepted training images and the median defect size, where masks
were measured. :func:`resolve_input_mode` is the rule, on plain numbers:

* ``resize`` or ``crop`` asked for explicitly is kept;
* ``auto`` crops when resizing to ``image_size`` would shrink the median image by more than
  :data:`MAX_SHRINK` (2x) along its longer side, or would shrink it at all and leave the median
  defect smaller than :data:`MIN_DEFECT_PX` (4 px) across; otherwise it resizes. Without image
  sizes in the manifest it resizes.

The defect size is ``sqrt(mask_area / mask_components)`` per image (the side of a square with the
area of its average connected component), the median over the images whose mask has defect
pixels. For long thin defects (scratches, cracks) this is larger than their width, so the rule
errs towards ``resize`` for them; a dataset of hairline cracks on images only slightly larger
than ``image_size`` may want ``input_mode: crop`` set explicitly.

:func:`package_input_meta` gives the keys a trained model records for prediction: ``input_mode``
``"tile"`` (trained on crops: predict with a sliding window of ``image_size``) or ``"resize"``,
and ``input_scale`` when the crops were taken from rescaled images.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

__all__ = ["INPUT_MODES", "MAX_SHRINK", "MIN_DEFECT_PX", "InputFacts", "InputPlan", "input_facts",
           "resolve_input_mode", "package_input_meta"]

INPUT_MODES = ("auto", "resize", "crop")
MAX_SHRINK = 2.0  # resizing shrinks the median image's longer side by more than this: crop
MIN_DEFECT_PX = 4.0  # a median defect smaller than this across after resizing: crop


@dataclass(frozen=True)
class InputFacts:
    """What the rule looks at, from the manifest's accepted training rows (None: not measured)."""

    median_width: float | None
    median_height: float | None
    median_defect_px: float | None


@dataclass(frozen=True)
class InputPlan:
    """The resolved input mode with the reason and the numbers behind it."""

    requested: str
    mode: str  # "resize" | "crop"
    reason: str
    image_size: int
    median_width: float | None = None
    median_height: float | None = None
    shrink: float | None = None  # longer median side / image_size
    median_defect_px: float | None = None
    defect_px_after_resize: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def input_facts(manifest: pd.DataFrame, *, split: str = "train") -> InputFacts:
    """Median image width/height and median defect size of the accepted ``split`` rows."""
    if not {"status", "split", "width", "height"} <= set(manifest.columns):
        return InputFacts(None, None, None)
    rows = manifest[manifest["status"].astype("object").eq("accepted")
                    & manifest["split"].astype("object").eq(split)]
    width = pd.to_numeric(rows["width"], errors="coerce").dropna()
    height = pd.to_numeric(rows["height"], errors="coerce").dropna()
    if width.empty or height.empty:
        return InputFacts(None, None, None)
    defect_px = None
    if {"mask_area", "mask_components"} <= set(rows.columns):
        area = pd.to_numeric(rows["mask_area"], errors="coerce")
        components = pd.to_numeric(rows["mask_components"], errors="coerce")
        measured = (area > 0) & (components > 0)
        if measured.any():
            defect_px = float(((area[measured] / components[measured]) ** 0.5).median())
    return InputFacts(float(width.median()), float(height.median()), defect_px)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 2)


def resolve_input_mode(requested: str, *, image_size: int, median_width: float | None,
                       median_height: float | None, median_defect_px: float | None = None,
                       max_shrink: float = MAX_SHRINK, min_defect_px: float = MIN_DEFECT_PX) -> InputPlan:
    """``resize`` or ``crop`` for ``requested`` (``auto``/``resize``/``crop``), with the reason.

    ``median_width``/``median_height``: the training images' median size in px (None: unknown);
    ``median_defect_px``: the median defect size in px (None: no measured defect). See the module
    docstring for the rule.
    """
    if requested not in INPUT_MODES:
        raise ValueError(f"model.input_mode must be one of {list(INPUT_MODES)}, got {requested!r}")
    if image_size <= 0:
        raise ValueError(f"model.image_size must be positive, got {image_size}")
    sized = median_width is not None and median_height is not None and median_width > 0 and median_height > 0
    shrink = max(median_width, median_height) / image_size if sized else None  # type: ignore[type-var]
    after = median_defect_px / shrink if (shrink is not None and median_defect_px is not None) else None
    numbers = {"image_size": int(image_size), "median_width": _rounded(median_width),
               "median_height": _rounded(median_height), "shrink": _rounded(shrink),
               "median_defect_px": _rounded(median_defect_px), "defect_px_after_resize": _rounded(after)}
    if requested != "auto":
        return InputPlan(requested, requested, f"model.input_mode: {requested} (set explicitly)", **numbers)
    if shrink is None:
        return InputPlan(requested, "resize", "auto: the manifest has no image sizes, so whole images are resized",
                         **numbers)
    image = f"the median image ({median_width:g} x {median_height:g} px)"
    if shrink > max_shrink:
        return InputPlan(requested, "crop", f"auto: resizing {image} to {image_size} px would shrink it "
                         f"{shrink:.1f}x (more than {max_shrink:g}x), so training takes {image_size} px crops at "
                         "native scale", **numbers)
    if shrink > 1 and after is not None and after < min_defect_px:
        return InputPlan(requested, "crop", f"auto: resizing {image} to {image_size} px would shrink the median "
                         f"defect from {median_defect_px:.1f} to {after:.1f} px (under {min_defect_px:g} px), so "
                         f"training takes {image_size} px crops at native scale", **numbers)
    if shrink <= 1:
        effect = f"does not shrink {image}"
    else:
        effect = f"shrinks {image} {shrink:.1f}x (at most {max_shrink:g}x)"
        if after is not None:
            effect += f" and keeps the median defect at {after:.1f} px (at least {min_defect_px:g} px)"
    return InputPlan(requested, "resize", f"auto: resizing to {image_size} px {effect}, so whole images are resized",
                     **numbers)


def package_input_meta(mode: str, *, scale: float = 1.0) -> dict[str, Any]:
    """The model-meta keys prediction reads: ``input_mode`` (``tile``/``resize``) and ``input_scale``.

    ``mode`` is a resolved mode (``resize`` or ``crop``). A model trained on crops records
    ``"tile"`` (its ``image_size`` is the crop side, in pixels of the image rescaled by
    ``input_scale``); ``input_scale`` is written only for crops of rescaled images (scale != 1).
    """
    if mode == "resize":
        return {"input_mode": "resize"}
    if mode != "crop":
        raise ValueError(f"a resolved input mode is 'resize' or 'crop', got {mode!r}")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"model.crop.scale must be a positive number, got {scale!r}")
    return {"input_mode": "tile", **({"input_scale": float(scale)} if scale != 1.0 else {})}
