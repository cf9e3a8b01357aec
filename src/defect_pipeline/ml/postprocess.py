"""Post-processing: the operating point (:class:`Thresholds`) and how it turns probabilities into decisions.

Pure numpy/OpenCV, no model: :class:`RawOutput` holds one image's class and pixel probabilities
before any threshold; :func:`decide` applies a :class:`Thresholds` to it (image label, defect
score, per-pixel mask with small regions removed by :func:`remove_small_regions`) and returns a
:class:`Prediction`. Every predictor (single model, ensemble, ONNX or PyTorch) and the threshold
tuning share this one decision rule.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np

from defect_pipeline.ml.labels import LabelSpace


@dataclass(frozen=True)
class Thresholds:
    """The operating point applied to a model's probabilities.

    Attributes:
        image: an image is a defect when ``1 - p(good)`` is at least this (datasets without
            defect-free images: the label is always the most probable defect class).
        pixel: a pixel is a defect when ``1 - p(background)`` (binary: ``p(defect)``) is at
            least this.
        min_area: defect regions (8-connected) smaller than this many pixels, measured at the
            image's own size, are removed from the mask.
        per_class: one threshold per defect class (empty: all equal). Among the defect classes
            the label is the one with the largest ``p(class) / threshold(class)``; with equal
            thresholds that is the plain argmax.
        source: where the values come from (``default`` or a tuning run), recorded with every
            prediction.
    """

    image: float = 0.5
    pixel: float = 0.5
    min_area: int = 0
    per_class: dict[str, float] = field(default_factory=dict)
    source: str = "default: 0.5 / 0.5 / 0 px (not tuned)"

    def __post_init__(self) -> None:
        for name in ("image", "pixel"):
            value = getattr(self, name)
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"thresholds.{name} must be within [0, 1], got {value}")
        if int(self.min_area) < 0:
            raise ValueError(f"thresholds.min_area must be >= 0, got {self.min_area}")
        for name, value in self.per_class.items():
            if not 0.0 < float(value) <= 1.0:
                raise ValueError(f"thresholds.per_class.{name} must be within (0, 1], got {value}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Thresholds:
        known = {k: data[k] for k in ("image", "pixel", "min_area", "per_class", "source") if k in data}
        return cls(**known)

    def replace(self, **changes: Any) -> Thresholds:
        return Thresholds.from_dict({**self.to_dict(), **changes})



@dataclass
class Prediction:
    """One image's result at its own size."""

    label: str
    scores: dict[str, float]
    defect_score: float
    mask: np.ndarray  # (H, W) uint8: 0 background, 1 + i defect class i (binary: 1 defect)
    defect_area: int  # defect pixels after min_area filtering

    def row(self) -> dict[str, Any]:
        """Flat columns: ``label``, ``defect_score``, ``score_<class>``, ``defect_area``."""
        return {"label": self.label, "defect_score": self.defect_score,
                **{f"score_{name}": value for name, value in self.scores.items()},
                "defect_area": self.defect_area}


def remove_small_regions(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Set 8-connected defect regions smaller than ``min_area`` pixels to background."""
    if min_area <= 1 or not mask.any():
        return mask
    count, components, stats, _ = cv2.connectedComponentsWithStats((mask > 0).astype(np.uint8), connectivity=8)
    small = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] < min_area)
    small = small[small != 0]  # component 0 is the background
    if small.size == 0:
        return mask
    out = mask.copy()
    out[np.isin(components, small)] = 0
    return out


@dataclass
class RawOutput:
    """The model's probabilities for one image, before any threshold."""

    class_probs: np.ndarray  # (num_image_classes,)
    seg_probs: np.ndarray  # (H, W, C) at the image's own size (C = 1 in binary mode)

    @property
    def defect_pixel_probs(self) -> np.ndarray:
        """``(H, W)`` probability that a pixel is a defect (any class)."""
        return self.seg_probs[:, :, 0] if self.seg_probs.shape[2] == 1 else 1.0 - self.seg_probs[:, :, 0]

    @property
    def defect_class_map(self) -> np.ndarray:
        """``(H, W)`` segmentation index of each pixel if it is called a defect: 1 + its most probable
        defect class (binary: 1)."""
        if self.seg_probs.shape[2] == 1:
            return np.ones(self.seg_probs.shape[:2], dtype=np.uint8)
        return (1 + np.argmax(self.seg_probs[:, :, 1:], axis=2)).astype(np.uint8)


def decide_labels(class_probs: np.ndarray, labels: LabelSpace, thresholds: Thresholds) -> np.ndarray:
    """Image-class index of each row of ``class_probs`` (N x image classes) at an operating point.

    The image rule of :func:`decide`, for many images at once (threshold tuning checks accuracy with it).
    """
    class_probs = np.asarray(class_probs, dtype=np.float64).reshape(-1, labels.num_image_classes)
    offset = 1 if labels.has_good else 0
    defect_probs = class_probs[:, offset:]
    if thresholds.per_class:
        scale = np.asarray([thresholds.per_class.get(c, 1.0) for c in labels.defect_classes], dtype=np.float64)
        defect_probs = defect_probs / scale
    indices = offset + np.argmax(defect_probs, axis=1)
    if labels.has_good:
        indices = np.where(1.0 - class_probs[:, 0] >= thresholds.image, indices, 0)
    return indices


def decide(raw: RawOutput, labels: LabelSpace, thresholds: Thresholds) -> Prediction:
    """Label, scores and mask of one image at an operating point (see :class:`Thresholds`)."""
    names = labels.image_classes
    scores = {name: float(p) for name, p in zip(names, raw.class_probs, strict=True)}
    label = names[int(decide_labels(raw.class_probs, labels, thresholds)[0])]
    defect_score = 1.0 - scores[labels.good_label] if labels.has_good else 1.0
    mask = np.where(raw.defect_pixel_probs >= thresholds.pixel, raw.defect_class_map, 0).astype(np.uint8)
    mask = remove_small_regions(mask, int(thresholds.min_area))
    return Prediction(label, scores, float(defect_score), mask, int((mask > 0).sum()))
