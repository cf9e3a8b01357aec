"""Sliding-window prediction through the Predictor (model meta ``input_mode: tile``): exact placement, batches of
tiles, both backends, TTA, ensembles, evaluation and the pyfunc model.

The exact tests use a fake package whose "network" marks bright pixels as ``crack`` (pointwise, so every tile
that covers a pixel agrees and the stitched mask must equal the painted defect). Run against the code before
tiling existed, ``test_a_defect_in_any_tile_of_a_large_image_appears_at_its_place`` failed on its first image
(the whole 256 px image was resized to the 32 px tile: the 3 x 4 px defect came back blurred or vanished) and
the other tests failed on the missing ``input_mode`` / ``tile_batch_size`` / ``iter_probabilities``.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from defect_pipeline.ml.evaluation import evaluate_split
from defect_pipeline.ml.export import export_onnx
from defect_pipeline.ml.labels import LabelSpace
from defect_pipeline.ml.package import ModelPackage
from defect_pipeline.ml.postprocess import Thresholds
from defect_pipeline.ml.predict import EnsemblePredictor, Predictor
from defect_pipeline.ml.tiling import TileGrid
from tests.conftest import make_tiny_package

LABELS = LabelSpace(("crack", "spot"), has_good=True)
TILE = 32


class BrightPixelNet(torch.nn.Module):
    """Pixels brighter than the normalisation mean are ``crack``; a tile holding one is classified ``crack``,
    any other tile ``good`` (or ``spot`` without a good class), all with confident logits."""

    def __init__(self, labels: LabelSpace, seg_mode: str):
        super().__init__()
        self.labels, self.binary = labels, seg_mode == "binary"

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sign = (x.mean(dim=1) > 0).float() * 2 - 1  # (N, T, T): +1 bright, -1 dark
        if self.binary:
            seg = 20 * sign[:, None]
        else:
            seg = torch.full((x.shape[0], self.labels.num_seg_classes, *x.shape[2:]), -20.0)
            seg[:, 0], seg[:, 1] = 0.0, 20 * sign
        has_defect = (sign > 0).flatten(1).any(dim=1).float() * 2 - 1
        crack = self.labels.image_index("crack")
        cls = torch.full((x.shape[0], self.labels.num_image_classes), -20.0)
        cls[:, 0 if self.labels.has_good else 1] = 0.0  # "good", or "spot" without a good class
        cls[:, crack] = 20 * has_defect
        return seg, cls


class BrightPixelPackage(ModelPackage):
    def build_model(self) -> torch.nn.Module:
        return BrightPixelNet(self.labels, self.meta["seg_mode"])


def bright_package(labels: LabelSpace = LABELS, *, seg_mode: str = "multiclass", input_mode: str = "tile"
                   ) -> ModelPackage:
    return BrightPixelPackage({}, {"backbone": "bright-pixels", "image_size": TILE, "seg_mode": seg_mode,
                                   "labels": labels.to_dict(), "input_mode": input_mode})


def dark(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 60, (height, width, 3), dtype=np.uint8)


def test_a_defect_in_any_tile_of_a_large_image_appears_at_its_place() -> None:
    """An image 8x the tile size: a 3 x 4 px defect inside each of its 121 tiles in turn, at a different offset
    within the tile each time; the stitched mask is exactly the defect, the label ``crack``."""
    size = 8 * TILE
    predictor = Predictor(bright_package())
    background = dark(size, size)
    grid = TileGrid.cover(size, size, TILE, 0.25)
    assert len(grid) == 121
    for start in range(0, len(grid), 16):
        images, masks = [], []
        for i, (y, x) in enumerate(grid.origins[start:start + 16], start=start):
            dy, dx = (5 * i) % (TILE - 3), (11 * i) % (TILE - 4)
            image, mask = background.copy(), np.zeros((size, size), np.uint8)
            image[y + dy:y + dy + 3, x + dx:x + dx + 4] = 255
            mask[y + dy:y + dy + 3, x + dx:x + dx + 4] = 1
            images.append(image)
            masks.append(mask)
        for i, (prediction, mask) in enumerate(zip(predictor.predict(images), masks, strict=True)):
            assert prediction.mask.shape == (size, size)
            np.testing.assert_array_equal(prediction.mask, mask, err_msg=f"tile {start + i} at {grid.origins[start + i]}")
            assert prediction.label == "crack" and prediction.defect_area == 12
    (blank,) = predictor.predict([background])
    assert blank.label == "good" and blank.defect_area == 0


@pytest.mark.parametrize("seg_mode", ["multiclass", "binary"])
def test_non_square_and_smaller_than_tile_images_keep_their_size_and_defect(seg_mode: str) -> None:
    predictor = Predictor(bright_package(seg_mode=seg_mode))
    for height, width, (y, x) in [(20, 90, (15, 84)), (300, 17, (290, 0)), (5, 5, (4, 4)), (33, 1000, (30, 999))]:
        image = dark(height, width)
        image[y, x] = 255
        (prediction,) = predictor.predict([image])
        expected = np.zeros((height, width), np.uint8)
        expected[y, x] = 1
        np.testing.assert_array_equal(prediction.mask, expected)


def test_without_a_good_class_the_label_comes_from_the_tile_with_the_defect() -> None:
    """Every defect-free tile says ``spot`` with confidence; only the tile holding the crack says ``crack``."""
    labels = LabelSpace(("crack", "spot"), has_good=False)
    predictor = Predictor(bright_package(labels))
    image = dark(4 * TILE, 4 * TILE)
    image[100:104, 7:9] = 255
    (prediction,) = predictor.predict([image])
    assert prediction.label == "crack" and prediction.defect_area == 8


def test_tiles_go_through_the_network_in_bounded_batches() -> None:
    predictor = Predictor(bright_package(), tile_batch_size=5)
    run, shapes = predictor._run, []
    predictor._run = lambda batch: shapes.append(tuple(batch.shape)) or run(batch)
    predictor.probabilities([dark(100, 150), dark(40, 40)])
    tiles = len(TileGrid.cover(100, 150, TILE, 0.25)) + len(TileGrid.cover(40, 40, TILE, 0.25))
    assert all(s[0] <= 5 and s[1:] == (3, TILE, TILE) for s in shapes)
    assert sum(s[0] for s in shapes) == tiles == 24 + 4
    with pytest.raises(ValueError, match="tile_batch_size must be >= 1"):
        Predictor(bright_package(), tile_batch_size=0)
    with pytest.raises(ValueError, match="tile_overlap must be within"):
        Predictor(bright_package(), tile_overlap=1.0)


def test_the_overlap_decides_how_many_tiles_are_run() -> None:
    counts = {}
    for overlap in (0.0, 0.5):
        predictor = Predictor(bright_package(), tile_overlap=overlap)
        run, seen = predictor._run, []
        predictor._run = lambda batch, run=run, seen=seen: seen.append(batch.shape[0]) or run(batch)
        predictor.probabilities([dark(128, 128)])
        counts[overlap] = sum(seen)
    assert counts == {0.0: 16, 0.5: 49}


@pytest.fixture(scope="module")
def tiled() -> ModelPackage:
    return make_tiny_package(LABELS, image_size=64, input_mode="tile")


def test_the_package_round_trip_keeps_input_mode_and_bad_modes_are_refused(tiled: ModelPackage,
                                                                           tmp_path: Path) -> None:
    folder = tiled.save(tmp_path / "model")
    assert json.loads((folder / "model.json").read_text())["input_mode"] == "tile"
    loaded = ModelPackage.load(folder)
    assert loaded.input_mode == "tile" and Predictor(loaded).input_mode == "tile"
    assert make_tiny_package(LABELS).input_mode == "resize"  # no input_mode in model.json: today's behaviour
    meta = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**meta, "input_mode": "crop"}))
    with pytest.raises(ValueError, match=r"model\.json has input_mode 'crop'; use one of \['resize', 'tile'\]"):
        Predictor(ModelPackage.load(folder))


def test_an_image_of_exactly_one_tile_is_predicted_as_in_resize_mode(tiled: ModelPackage) -> None:
    """Blending one tile divides its weights back out: the output equals the plain forward pass."""
    resize = ModelPackage(tiled.state_dict, {k: v for k, v in tiled.meta.items() if k != "input_mode"})
    image = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    (a,), (b,) = Predictor(tiled).probabilities([image]), Predictor(resize).probabilities([image])
    np.testing.assert_allclose(a.class_probs, b.class_probs, atol=1e-6)
    np.testing.assert_allclose(a.seg_probs, b.seg_probs, atol=1e-6)


def test_tta_in_tile_mode_averages_the_flipped_tiles(tiled: ModelPackage) -> None:
    """On a width whose grid is mirror-symmetric (64 + 3 * 48 px), per-tile flips equal predicting the flipped
    image and flipping its maps back."""
    image = np.random.default_rng(4).integers(0, 256, (64, 208, 3), dtype=np.uint8)
    plain = Predictor(tiled)
    (got,) = Predictor(tiled, tta=["hflip"]).probabilities([image])
    view, flipped = plain.probabilities([image, np.ascontiguousarray(image[:, ::-1])])
    np.testing.assert_allclose(got.seg_probs, (view.seg_probs + flipped.seg_probs[:, ::-1]) / 2, atol=2e-5)
    assert not np.allclose(got.seg_probs, view.seg_probs, atol=1e-4)


def test_an_ensemble_with_a_tiling_member_averages_at_each_images_size(tiled: ModelPackage) -> None:
    tile_member, resize_member = Predictor(tiled), Predictor(make_tiny_package(LABELS, seed=1))
    ensemble = EnsemblePredictor([tile_member, resize_member], weights=[1, 3])
    images = [np.random.default_rng(i).integers(0, 256, shape, dtype=np.uint8)
              for i, shape in enumerate([(90, 150, 3), (40, 70, 3)])]
    for got, a, b in zip(ensemble.probabilities(images), tile_member.probabilities(images),
                         resize_member.probabilities(images), strict=True):
        np.testing.assert_allclose(got.seg_probs, 0.25 * a.seg_probs + 0.75 * b.seg_probs, atol=1e-6)
        np.testing.assert_allclose(got.class_probs, 0.25 * a.class_probs + 0.75 * b.class_probs, atol=1e-7)
    assert [p.mask.shape for p in ensemble.predict(images)] == [(90, 150), (40, 70)]


def test_onnx_runs_the_exported_tile_network_per_tile_batch(tiled: ModelPackage, tmp_path: Path) -> None:
    folder = tiled.save(tmp_path / "model")
    exported = export_onnx(tiled)
    exported.save(folder)
    assert exported.report["input_mode"] == "tile" and exported.report["input"]["image"] == ["batch", 3, 64, 64]
    loaded = ModelPackage.load(folder)
    images = [np.random.default_rng(5).integers(0, 256, (150, 200, 3), dtype=np.uint8)]
    onnx = Predictor(loaded, backend="onnx", tile_batch_size=3)
    run, sizes = onnx._run, []
    onnx._run = lambda batch: sizes.append(batch.shape[0]) or run(batch)
    (a,), (b,) = Predictor(loaded).probabilities(images), onnx.probabilities(images)
    assert sum(sizes) == len(TileGrid.cover(150, 200, 64, 0.25)) and max(sizes) == 3
    np.testing.assert_allclose(a.class_probs, b.class_probs, atol=1e-4)
    np.testing.assert_allclose(a.seg_probs, b.seg_probs, atol=1e-4)


def test_the_pyfunc_model_predicts_by_sliding_window(tiled: ModelPackage, tmp_path: Path) -> None:
    from defect_pipeline.tracking.pyfunc import DefectPyfuncModel

    folder = tiled.save(tmp_path / "model")
    model = DefectPyfuncModel()
    model.load_context(SimpleNamespace(artifacts={"package": str(folder)}))
    run, sizes = model._predictor._run, []
    model._predictor._run = lambda batch: sizes.append(batch.shape[0]) or run(batch)
    image = np.random.default_rng(6).integers(0, 256, (150, 200, 3), dtype=np.uint8)
    frame = model.predict(None, [image], params={"mask_format": "array"})
    assert sum(sizes) == len(TileGrid.cover(150, 200, 64, 0.25)) == 12
    (expected,) = Predictor(ModelPackage.load(folder)).predict([image])
    assert frame.loc[0, "status"] == "ok" and frame.loc[0, "label"] == expected.label
    np.testing.assert_array_equal(frame.loc[0, "mask"], expected.mask)


class LargeImages:
    """A split of four 96 x 160 images (3 x 5 tiles): two good, two with a crack in different tiles."""

    split = "test"
    targets = [0, 1, 0, 1]
    sample_ids = ["g0", "c1", "g2", "c3"]
    image_paths = [f"{s}.png" for s in sample_ids]

    def __len__(self) -> int:
        return 4

    def read_sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image, mask = dark(96, 160, seed=index), np.zeros((96, 160), np.uint8)
        if self.targets[index]:
            y, x = (5, 140) if index == 1 else (80, 60)
            image[y:y + 4, x:x + 6], mask[y:y + 4, x:x + 6] = 255, 1
        return image, mask


def test_evaluation_scores_the_stitched_full_resolution_masks() -> None:
    result = evaluate_split(LargeImages(), Predictor(bright_package()), tuned=Thresholds(), worst_k=0, batch_size=3)
    metrics = result.summary["final_metrics_fixed"]
    assert metrics["accuracy"] == pytest.approx(1.0) and metrics["iou/crack"] == pytest.approx(1.0)


def test_a_model_trained_on_rescaled_crops_sees_the_image_rescaled_and_answers_at_full_size() -> None:
    """``input_scale: 0.5`` (crops of images halved, ``model.crop.scale``): the tiles come from the halved image
    and the masks come back at the image's own size, the defect in its place. Before the predictor read the key,
    it tiled the full-size image (88 tiles here instead of 20)."""
    package = bright_package()
    package.meta["input_scale"] = 0.5
    predictor = Predictor(package)
    seen: list[int] = []
    run = predictor._run
    predictor._run = lambda batch: (seen.append(batch.shape[0]), run(batch))[1]
    image = dark(256, 192)
    image[100:116, 40:56] = 255
    raw = predictor.probabilities([image])[0]
    assert raw.seg_probs.shape[:2] == (256, 192)
    assert sum(seen) == len(TileGrid.cover(128, 96, TILE, 0.25)) < len(TileGrid.cover(256, 192, TILE, 0.25))
    mask = raw.defect_pixel_probs > 0.5
    assert mask[102:114, 42:54].all() and not mask[:95].any() and not mask[121:].any()
    assert not mask[:, :35].any() and not mask[:, 61:].any()
