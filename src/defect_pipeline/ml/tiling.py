"""Sliding-window prediction, the maths only: where the tiles go, how each is weighted, how they are stitched.

A model trained on crops at native scale (model meta ``input_mode: tile``) predicts a large image
tile by tile. Pure numpy, no model, so every rule here is unit-tested on its own:

* :class:`TileGrid` — the top-left corners of ``T x T`` tiles covering an ``H x W`` image with a
  given fractional ``overlap``: the stride is ``round(T * (1 - overlap))``, the last tile of each
  row and column is flush with the border (so no tile reaches past the image), and an image
  smaller than ``T`` along a side is first padded to ``T`` (:func:`pad_to_tile`, reflect).
* :func:`blend_window` — a separable raised-sine (Hann) weight, highest at a tile's centre where
  the network sees the most context, with a floor so a tile's border (and the image's border,
  which only border tiles see) still counts.
* :class:`Stitcher` — accumulates ``weight * probabilities`` and ``weight`` per pixel and divides
  once at the end, so the effective weights of the tiles covering a pixel sum to one everywhere.
  It holds only the two native-size maps; tiles are added one batch at a time.
* :func:`tile_defect_scores` and :func:`image_class_probs` — the image-level rule: the image takes
  the class probabilities of its *most defective tile*. With a defect-free class a tile's score is
  ``1 - p(good)`` (so the image's defect score is the maximum over its tiles: a defect that covers
  1 % of a large image is not averaged away by the 99 % of good tiles); without one (every image
  holds a defect) it is the tile's mean defect-pixel probability, so the label comes from the tile
  where the segmentation sees the most defect.

Ideas from anomalib's ``Tiler`` (tile/stride arithmetic, overlap averaging); the blending window and
the classification rule are ours.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_OVERLAP = 0.25
WINDOW_FLOOR = 0.1


def check_overlap(overlap: float) -> float:
    """``overlap`` as a float in ``[0, 1)``, or a ValueError naming the parameter."""
    value = float(overlap)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"tile_overlap must be within [0, 1) (a fraction of the tile size, e.g. 0.25), got {overlap}")
    return value


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of tiles of size ``tile`` along a side of ``length`` pixels; the last one ends at the border.

    A side no longer than ``tile`` has one tile at 0 (the image is padded to ``tile``).
    """
    if tile < 1 or length < 1:
        raise ValueError(f"tile size and image side must be >= 1, got tile {tile} for a side of {length}")
    if length <= tile:
        return [0]
    stride = max(1, round(tile * (1.0 - check_overlap(overlap))))
    count = math.ceil((length - tile) / stride) + 1
    return [min(i * stride, length - tile) for i in range(count)]


@dataclass(frozen=True)
class TileGrid:
    """The tiles covering an ``height x width`` image (padded to at least ``tile`` along each side)."""

    height: int
    width: int
    tile: int
    origins: tuple[tuple[int, int], ...]  # (y, x) top-left corners in the padded image, row by row

    @classmethod
    def cover(cls, height: int, width: int, tile: int, overlap: float = DEFAULT_OVERLAP) -> TileGrid:
        rows, cols = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
        return cls(int(height), int(width), int(tile), tuple((y, x) for y in rows for x in cols))

    @property
    def padded_shape(self) -> tuple[int, int]:
        return max(self.height, self.tile), max(self.width, self.tile)

    def __len__(self) -> int:
        return len(self.origins)

    def batches(self, size: int) -> Iterator[tuple[tuple[int, int], ...]]:
        """The origins in consecutive groups of at most ``size``."""
        if size < 1:
            raise ValueError(f"tile batch size must be >= 1, got {size}")
        for start in range(0, len(self.origins), size):
            yield self.origins[start:start + size]


def pad_to_tile(image: np.ndarray, tile: int) -> np.ndarray:
    """``image`` (H, W[, C]) reflect-padded at the bottom/right to at least ``tile`` along each side (no copy if
    it already is)."""
    pad_h, pad_w = max(0, tile - image.shape[0]), max(0, tile - image.shape[1])
    if pad_h == 0 and pad_w == 0:
        return image
    widths = [(0, pad_h), (0, pad_w)] + [(0, 0)] * (image.ndim - 2)
    return np.pad(image, widths, mode="reflect")


def blend_window(tile: int, floor: float = WINDOW_FLOOR) -> np.ndarray:
    """``(tile, tile)`` float32 weights: ``floor + (1 - floor) * sin^2(pi (i + 0.5) / tile)`` along each axis,
    multiplied. Positive everywhere (at least ``floor**2``), largest at the centre, symmetric."""
    if not 0.0 < floor <= 1.0:
        raise ValueError(f"the blending window's floor must be within (0, 1], got {floor}")
    ramp = np.sin(np.pi * (np.arange(tile, dtype=np.float64) + 0.5) / tile) ** 2
    axis = floor + (1.0 - floor) * ramp
    return np.outer(axis, axis).astype(np.float32)


class Stitcher:
    """Weighted average of overlapping tile probabilities at the image's own size.

    ``add`` takes a batch of ``(N, C, T, T)`` probabilities with their origins; ``result`` divides
    the weighted sum by the summed weights (in place) and crops the padding: ``(H, W, C)`` float32.
    Memory: the two native-size maps (``H x W x C`` and ``H x W`` float32), nothing per tile.
    """

    def __init__(self, grid: TileGrid, *, floor: float = WINDOW_FLOOR):
        self.grid = grid
        self.window = blend_window(grid.tile, floor)
        self.weight_sum = np.zeros(grid.padded_shape, dtype=np.float32)
        self._sum: np.ndarray | None = None  # (H', W', C), allocated on the first add (C known then)

    def add(self, probs: np.ndarray, origins: Sequence[tuple[int, int]]) -> None:
        t = self.grid.tile
        if probs.ndim != 4 or probs.shape[0] != len(origins) or probs.shape[2:] != (t, t):
            raise ValueError(f"expected ({len(origins)}, C, {t}, {t}) tile probabilities, got {probs.shape}")
        if self._sum is None:
            self._sum = np.zeros((*self.grid.padded_shape, probs.shape[1]), dtype=np.float32)
        window = self.window[:, :, None]
        for tile_probs, (y, x) in zip(probs, origins, strict=True):
            self._sum[y:y + t, x:x + t] += tile_probs.transpose(1, 2, 0) * window
            self.weight_sum[y:y + t, x:x + t] += self.window

    def result(self) -> np.ndarray:
        """``(H, W, C)``: per pixel, the tiles' probabilities weighted by their normalised window."""
        if self._sum is None:
            raise ValueError("no tile was added")
        np.divide(self._sum, self.weight_sum[:, :, None], out=self._sum)
        out = self._sum[:self.grid.height, :self.grid.width]
        self._sum = None
        return out if out.flags.c_contiguous else np.ascontiguousarray(out)


def tile_defect_scores(class_probs: np.ndarray, seg_probs: np.ndarray, *, has_good: bool) -> np.ndarray:
    """How defective each tile is: ``1 - p(good)`` with a defect-free class, else its mean defect-pixel
    probability (``seg_probs`` ``(N, C, T, T)``; binary ``C = 1``: ``p(defect)``, else ``1 - p(background)``)."""
    if has_good:
        return 1.0 - class_probs[:, 0]
    defect = seg_probs[:, 0] if seg_probs.shape[1] == 1 else 1.0 - seg_probs[:, 0]
    return defect.reshape(defect.shape[0], -1).mean(axis=1)


def image_class_probs(tile_class_probs: np.ndarray, tile_scores: np.ndarray) -> np.ndarray:
    """The image's class probabilities: those of the tile with the highest score (the first on a tie)."""
    if tile_class_probs.ndim != 2 or len(tile_class_probs) == 0 or len(tile_scores) != len(tile_class_probs):
        raise ValueError(f"expected (N, K) class probabilities and N scores, got {tile_class_probs.shape} and "
                         f"{np.shape(tile_scores)}")
    return tile_class_probs[int(np.argmax(tile_scores))]
