"""Sliding-window maths (ml/tiling.py): tile positions, the blending window, stitching, the image-level rule.

Written before the module existed (all failed on import against the old code); each assertion pins
one property a wrong implementation breaks: a tile past the border, a pixel no tile covers,
weights that do not sum to one, an overlap ignored, a label averaged away.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from defect_pipeline.ml.tiling import (
    Stitcher,
    TileGrid,
    blend_window,
    check_overlap,
    image_class_probs,
    pad_to_tile,
    tile_defect_scores,
    tile_starts,
)

SIDES = (1, 7, 31, 32, 33, 63, 64, 65, 100, 257)
TILES = (1, 8, 32, 64)
OVERLAPS = (0.0, 0.25, 0.5, 0.75)


@pytest.mark.parametrize(("length", "tile", "overlap"), list(itertools.product(SIDES, TILES, OVERLAPS)))
def test_tiles_cover_every_pixel_stay_inside_and_overlap_as_asked(length: int, tile: int, overlap: float) -> None:
    starts = tile_starts(length, tile, overlap)
    padded = max(length, tile)
    assert starts[0] == 0 and starts[-1] == padded - tile  # first at 0, last flush with the (padded) border
    assert starts == sorted(set(starts))
    covered = np.zeros(padded, dtype=bool)
    for s in starts:
        covered[s:s + tile] = True
    assert covered.all()
    if length > tile:
        stride = max(1, round(tile * (1 - overlap)))
        gaps = np.diff(starts)
        assert (gaps[:-1] == stride).all() and 0 < gaps[-1] <= stride  # regular, the last one shifted back
        assert len(starts) == int(np.ceil((length - tile) / stride)) + 1  # no more tiles than needed


@pytest.mark.parametrize(("height", "width", "tile", "overlap"),
                         [(5, 300, 32, 0.25), (300, 5, 32, 0.5), (31, 31, 32, 0.0), (1000, 700, 128, 0.25),
                          (64, 200, 64, 0.9), (129, 65, 64, 0.1)])
def test_a_grid_covers_the_whole_image_even_when_a_side_is_shorter_than_the_tile(height, width, tile, overlap) -> None:
    grid = TileGrid.cover(height, width, tile, overlap)
    count = np.zeros(grid.padded_shape, dtype=int)
    for y, x in grid.origins:
        assert 0 <= y <= grid.padded_shape[0] - tile and 0 <= x <= grid.padded_shape[1] - tile
        count[y:y + tile, x:x + tile] += 1
    assert (count[:height, :width] >= 1).all()
    assert len(grid) == len(tile_starts(height, tile, overlap)) * len(tile_starts(width, tile, overlap))
    assert sum(len(b) for b in grid.batches(7)) == len(grid) and max(len(b) for b in grid.batches(7)) <= 7


def test_bad_overlaps_and_sizes_name_the_parameter() -> None:
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"tile_overlap must be within \[0, 1\)"):
            check_overlap(bad)
    with pytest.raises(ValueError, match="tile batch size must be >= 1"):
        next(TileGrid.cover(10, 10, 4).batches(0))
    with pytest.raises(ValueError, match="tile size"):
        tile_starts(10, 0, 0.25)


def test_small_images_are_reflect_padded_and_large_ones_left_alone() -> None:
    image = np.arange(3 * 5 * 3, dtype=np.uint8).reshape(3, 5, 3)
    padded = pad_to_tile(image, 8)
    assert padded.shape == (8, 8, 3)
    np.testing.assert_array_equal(padded[:3, :5], image)
    np.testing.assert_array_equal(padded[3, :5], image[1])  # reflect (not edge, not zeros): row 3 mirrors row 1
    big = np.zeros((10, 12, 3), np.uint8)
    assert pad_to_tile(big, 8) is big
    assert pad_to_tile(np.zeros((1, 1, 3), np.uint8), 4).shape == (4, 4, 3)  # a single pixel too


@pytest.mark.parametrize("tile", [1, 2, 7, 32, 256])
def test_the_window_is_positive_symmetric_and_highest_in_the_centre(tile: int) -> None:
    window = blend_window(tile, floor=0.1)
    assert window.shape == (tile, tile) and window.dtype == np.float32
    assert window.min() >= 0.1 ** 2 - 1e-7  # borders still count
    np.testing.assert_allclose(window, window.T)
    np.testing.assert_allclose(window, window[::-1, ::-1], rtol=1e-6)
    centre = window[(tile - 1) // 2, (tile - 1) // 2]
    assert centre == pytest.approx(window.max())
    if tile >= 7:
        assert window[0, 0] < 0.05 * centre  # a real taper, not a flat average


@pytest.mark.parametrize(("height", "width", "tile", "overlap"),
                         [(100, 150, 32, 0.25), (257, 64, 64, 0.5), (20, 90, 32, 0.25), (33, 33, 32, 0.75)])
def test_normalised_weights_cover_every_pixel_and_sum_to_one(height, width, tile, overlap) -> None:
    grid = TileGrid.cover(height, width, tile, overlap)
    stitcher = Stitcher(grid)
    # one channel per tile: stitched channel i is tile i's normalised weight at each pixel
    for index, origin in enumerate(grid.origins):
        onehot = np.zeros((1, len(grid), tile, tile), np.float32)
        onehot[0, index] = 1.0
        stitcher.add(onehot, [origin])
    assert (stitcher.weight_sum[:height, :width] > 0).all()
    weights = stitcher.result()
    assert weights.shape == (height, width, len(grid))
    np.testing.assert_allclose(weights.sum(axis=2), 1.0, atol=1e-5)
    assert (weights >= 0).all()
    # the weights are a blend, not a plain average: where two tiles overlap, the one whose centre is nearer wins
    if len(grid) > 1:
        y, x = grid.origins[1]
        assert weights[y, x, 1] < weights[y, x, 0]  # tile 1's corner lies inside tile 0, nearer tile 0's centre


def test_stitching_a_constant_gives_that_constant_and_keeps_tile_positions() -> None:
    grid = TileGrid.cover(70, 90, 32, 0.25)
    stitcher = Stitcher(grid)
    truth = np.random.default_rng(0).random((70, 90, 2)).astype(np.float32)
    for origins in grid.batches(5):  # each tile reports exactly the truth at its own place
        stitcher.add(np.stack([truth[y:y + 32, x:x + 32].transpose(2, 0, 1) for y, x in origins]), origins)
    np.testing.assert_allclose(stitcher.result(), truth, atol=1e-5)
    with pytest.raises(ValueError, match=r"expected \(1, C, 32, 32\)"):
        Stitcher(grid).add(np.zeros((1, 2, 16, 16), np.float32), [(0, 0)])


def test_the_image_takes_the_class_probabilities_of_its_most_defective_tile() -> None:
    """Averaging tiles (the mutant) would call an image with one defective tile out of four good."""
    tiles = np.array([[0.9, 0.05, 0.05], [0.1, 0.2, 0.7], [0.95, 0.03, 0.02], [0.8, 0.15, 0.05]])
    scores = tile_defect_scores(tiles, np.zeros((4, 3, 2, 2)), has_good=True)
    np.testing.assert_allclose(scores, 1 - tiles[:, 0])
    np.testing.assert_array_equal(image_class_probs(tiles, scores), tiles[1])
    assert 1 - image_class_probs(tiles, scores)[0] == pytest.approx(0.9)  # defect score = max over tiles


def test_without_a_good_class_the_label_comes_from_the_tile_the_segmentation_sees_most_defect_in() -> None:
    tiles = np.array([[0.9, 0.1], [0.4, 0.6]])  # tile 0 is more confident, but its pixels are background
    seg = np.zeros((2, 3, 4, 4))
    seg[:, 0] = 1.0  # background everywhere ...
    seg[1, 0, :2], seg[1, 2, :2] = 0.0, 1.0  # ... except half of tile 1, class 2
    scores = tile_defect_scores(tiles, seg, has_good=False)
    np.testing.assert_allclose(scores, [0.0, 0.5])
    np.testing.assert_array_equal(image_class_probs(tiles, scores), tiles[1])
    binary = tile_defect_scores(tiles, seg[:, 2:], has_good=False)  # binary mode: the channel is p(defect)
    np.testing.assert_allclose(binary, [0.0, 0.5])
    with pytest.raises(ValueError, match="expected"):
        image_class_probs(np.zeros((0, 2)), np.zeros(0))
