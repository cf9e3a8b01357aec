"""Training crops at native (or a set) scale: placed uniformly or on a defect pixel.

:class:`CropSampler` cuts one ``size x size`` sample out of an image and its mask. With
probability ``defect_rate`` (and when the mask has defect pixels) the crop is placed on a defect:
as in nnU-Net's foreground oversampling, a defect class present in the mask is drawn first (so a
small class is not outweighed by a large one), then one of its pixels, and the crop is placed so
that this pixel lands anywhere in its central :data:`DEFECT_JITTER` share (never always in the
middle, so the network learns no position prior); otherwise the crop is placed uniformly. A crop
never leaves the image except where the image is smaller than the crop: it is then padded at the
bottom/right with black pixels of background class.

``scale`` != 1 takes the crop from the image rescaled by ``scale``: a ``size / scale`` window of the
original is cut and resized to ``size`` (area interpolation when shrinking, linear when enlarging;
masks nearest-neighbour, as everywhere in this project), which is the same as rescaling the
whole image first, without paying for it.

Randomness: a training sampler keeps its own ``numpy`` generator, reseeded through
``set_random_seed`` exactly like the albumentations transforms (per epoch by the engine, per
worker by :func:`defect_pipeline.ml.dataset.seed_worker`), so resumed runs repeat their crops. A
``deterministic`` sampler (validation) draws each sample's crop from ``(seed, index)`` alone: the
same crop of the same sample in every epoch, run and stage.

:func:`crop_target` is the image class of a crop: a crop of a defective image that shows none of
its defect pixels is defect-free when the data has a defect-free class (the mask says so).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from defect_pipeline.ml.labels import LabelSpace

__all__ = ["DEFECT_JITTER", "CropSampler", "CroppedTransform", "crop_window", "crop_target"]

DEFECT_JITTER = 0.75  # a chosen defect pixel lands in the central 75 % of the crop (each axis)


def _defect_position(mask: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    """A random pixel (row, column) of a random defect class present in ``mask``."""
    classes = np.unique(mask[mask > 0])
    chosen = classes[rng.integers(len(classes))] if len(classes) > 1 else classes[0]
    rows, columns = np.nonzero(mask == chosen)
    k = int(rng.integers(len(rows)))
    return int(rows[k]), int(columns[k])


def crop_window(height: int, width: int, window: int, rng: np.random.Generator, *,
                defect_at: tuple[int, int] | None = None) -> tuple[int, int]:
    """``(top, left)`` of a ``window x window`` crop of a ``height x width`` image.

    Uniform over the positions that keep the crop inside the image (0 along an axis shorter than
    the window: the crop is padded there), or, with ``defect_at=(row, column)``, a position whose
    crop holds that pixel in its central :data:`DEFECT_JITTER` share where the image allows.
    """
    if window <= 0 or height <= 0 or width <= 0:
        raise ValueError(f"crop window and image size must be positive, got window {window}, image {width}x{height}")
    max_top, max_left = max(0, height - window), max(0, width - window)
    if defect_at is None:
        return int(rng.integers(max_top + 1)), int(rng.integers(max_left + 1))
    margin = int(window * (1.0 - DEFECT_JITTER) / 2)
    low, high = margin, max(margin, window - 1 - margin)
    row, column = defect_at
    top = row - int(rng.integers(low, high + 1))
    left = column - int(rng.integers(low, high + 1))
    return min(max(top, 0), max_top), min(max(left, 0), max_left)


def _cut(array: np.ndarray, top: int, left: int, window: int) -> np.ndarray:
    """``array[top:top + window, left:left + window]``, zero-padded at the bottom/right to the full window."""
    part = array[top:top + window, left:left + window]
    if part.shape[:2] == (window, window):
        return part
    out = np.zeros((window, window) + array.shape[2:], dtype=array.dtype)
    out[:part.shape[0], :part.shape[1]] = part
    return out


class CropSampler:
    """Cut ``size x size`` training crops; call as ``sampler(image, mask, index=i)``.

    ``image`` is ``(H, W, 3)`` uint8, ``mask`` ``(H, W)`` class indices; returns the cropped pair
    (``size x size``). ``scale``: crop from the image rescaled by this factor; ``defect_rate``: the
    probability of a crop placed on a defect pixel (images without defect pixels are always
    cropped uniformly). ``deterministic=True``: the crop of sample ``index`` depends only on
    ``(seed, index)`` (``index`` is then required).
    """

    def __init__(self, size: int, *, scale: float = 1.0, defect_rate: float = 0.5, seed: int | None = None,
                 deterministic: bool = False):
        if int(size) <= 0:
            raise ValueError(f"crop size must be positive, got {size}")
        if not 0.0 < float(scale) <= 4.0:
            raise ValueError(f"crop scale must be in (0, 4], got {scale}")
        if not 0.0 <= float(defect_rate) <= 1.0:
            raise ValueError(f"defect_rate must be in [0, 1], got {defect_rate}")
        self.size = int(size)
        self.scale = float(scale)
        self.defect_rate = float(defect_rate)
        self.deterministic = bool(deterministic)
        self.seed = 0 if seed is None and deterministic else seed
        self._rng = np.random.default_rng(seed)

    @property
    def window(self) -> int:
        """Side of the window cut from the original image (``size / scale``)."""
        return max(1, int(round(self.size / self.scale)))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(size={self.size}, scale={self.scale:g}, defect_rate={self.defect_rate:g}, "
                f"deterministic={self.deterministic})")

    def set_random_seed(self, seed: int | None) -> None:
        """Restart the training stream from ``seed`` (a deterministic sampler keeps its per-sample seeds)."""
        if not self.deterministic:
            self._rng = np.random.default_rng(seed)

    def _generator(self, index: int | None) -> np.random.Generator:
        if not self.deterministic:
            return self._rng
        if index is None:
            raise ValueError("a deterministic CropSampler needs the sample index")
        return np.random.default_rng([int(self.seed or 0), int(index)])

    def __call__(self, image: np.ndarray, mask: np.ndarray, *, index: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        if image.shape[:2] != mask.shape[:2]:
            raise ValueError(f"image {image.shape[1]}x{image.shape[0]} and mask {mask.shape[1]}x{mask.shape[0]} "
                             "differ in size")
        rng = self._generator(index)
        on_defect = rng.random() < self.defect_rate  # drawn for every sample: the stream does not depend on masks
        defect_at = _defect_position(mask, rng) if on_defect and mask.any() else None
        window = self.window
        top, left = crop_window(mask.shape[0], mask.shape[1], window, rng, defect_at=defect_at)
        image_crop, mask_crop = _cut(image, top, left, window), _cut(mask, top, left, window)
        if window != self.size:
            shape = (self.size, self.size)
            image_crop = cv2.resize(image_crop, shape, interpolation=cv2.INTER_AREA if window > self.size
                                    else cv2.INTER_LINEAR)
            mask_crop = cv2.resize(mask_crop, shape, interpolation=cv2.INTER_NEAREST)
        return np.ascontiguousarray(image_crop), np.ascontiguousarray(mask_crop)


class CroppedTransform:
    """A crop then a transform, as one ``transform(image=..., mask=...)`` callable (the augmentation preview)."""

    def __init__(self, crop: CropSampler, transform: Callable[..., dict[str, Any]]):
        self.crop = crop
        self.transform = transform

    def set_random_seed(self, seed: int | None) -> None:
        self.crop.set_random_seed(seed)
        set_seed = getattr(self.transform, "set_random_seed", None)
        if callable(set_seed):
            set_seed(seed)

    def __call__(self, *, image: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
        image, mask = self.crop(image, mask, index=0 if self.crop.deterministic else None)
        return self.transform(image=image, mask=mask)


def crop_target(mask: np.ndarray, *, image_target: int, labels: LabelSpace, seg_mode: str, has_mask: bool) -> int:
    """The image class of a crop with segmentation target ``mask`` (class indices over ``labels.seg_classes``).

    A defect-free image, or one without a mask, keeps ``image_target``. A crop without defect
    pixels becomes the defect-free class where the data has one (else keeps ``image_target``); a
    crop with defect pixels takes the defect class with the most pixels in the crop (ties: the
    lower index, as :func:`defect_pipeline.data.masks.validate_masks` resolves image labels), or
    keeps ``image_target`` for binary masks, which do not name a class.
    """
    good = labels.image_index(labels.good_label) if labels.has_good else None
    if not has_mask or image_target == good:
        return image_target
    values = np.asarray(mask).ravel()
    if not (values > 0).any():
        return image_target if good is None else good
    if seg_mode == "binary":
        return image_target
    counts = np.bincount(values.astype(np.int64), minlength=labels.num_seg_classes)[1:labels.num_seg_classes]
    return labels.image_index(labels.defect_classes[int(np.argmax(counts))])
