"""Training crops: size and placement, padding, defect-aware sampling, determinism, crop labels.

These fail on the code before input modes (no :mod:`defect_pipeline.ml.crops`, and
``ManifestDataset`` had no ``crop``). The defect-rate test also shows that the statistic it checks
can fail: uniform crops (``defect_rate=0``) of the same image hold the tiny defect in about 2 % of
cases, far below the rate asked for.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from defect_pipeline.ml.crops import CropSampler, CroppedTransform, crop_target, crop_window
from defect_pipeline.ml.dataset import ManifestDataset, create_dataloader, reseed_augmentations
from defect_pipeline.ml.labels import LabelSpace


def _image(height: int, width: int) -> np.ndarray:
    """An image whose pixel at (r, c) encodes its position, so a crop can be located in the original."""
    rows, columns = np.mgrid[0:height, 0:width]
    return np.stack([rows % 256, columns % 256, (rows // 256) * 16 + columns // 256], axis=-1).astype(np.uint8)


def _locate(crop: np.ndarray) -> tuple[int, int]:
    """(top, left) in the original of a crop of :func:`_image`."""
    top = int(crop[0, 0, 0]) + 256 * (int(crop[0, 0, 2]) // 16)
    left = int(crop[0, 0, 1]) + 256 * (int(crop[0, 0, 2]) % 16)
    return top, left


def _tiny_defect(height: int = 512, width: int = 512) -> np.ndarray:
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[400:403, 100:103] = 2  # a 3 x 3 px defect of class 2
    return mask


def test_crops_have_the_size_and_come_from_inside_the_image() -> None:
    image, mask = _image(300, 500), _tiny_defect(300, 500)
    sampler = CropSampler(64, defect_rate=0.5, seed=0)
    for _ in range(200):
        crop, crop_mask = sampler(image, mask)
        assert crop.shape == (64, 64, 3) and crop_mask.shape == (64, 64) and crop.dtype == np.uint8
        top, left = _locate(crop)
        assert 0 <= top <= 300 - 64 and 0 <= left <= 500 - 64
        np.testing.assert_array_equal(crop, image[top:top + 64, left:left + 64])
        np.testing.assert_array_equal(crop_mask, mask[top:top + 64, left:left + 64])


def test_uniform_crops_reach_every_corner() -> None:
    rng = np.random.default_rng(0)
    positions = {crop_window(10, 12, 8, rng) for _ in range(500)}
    assert positions == {(top, left) for top in range(3) for left in range(5)}


def test_images_smaller_than_the_crop_are_padded_with_background() -> None:
    image, mask = np.full((40, 100, 3), 200, dtype=np.uint8), np.ones((40, 100), dtype=np.uint8)
    crop, crop_mask = CropSampler(64, seed=0)(image, mask)
    assert crop.shape == (64, 64, 3) and crop_mask.shape == (64, 64)
    assert (crop[:40] == 200).all() and (crop[40:] == 0).all()  # image rows first, then black padding
    assert (crop_mask[:40] == 1).all() and (crop_mask[40:] == 0).all()  # padding is background


@pytest.mark.parametrize("rate", [0.3, 0.5, 0.9])
def test_defect_rate_is_honoured_for_a_tiny_defect(rate: float) -> None:
    image, mask = _image(512, 512), _tiny_defect()
    sampler = CropSampler(64, defect_rate=rate, seed=1)
    hits = np.mean([sampler(image, mask)[1].any() for _ in range(1000)])
    assert rate - 0.05 <= hits <= rate + 0.08  # at rate, plus the few uniform crops that hit it by chance


def test_without_defect_sampling_the_tiny_defect_is_rarely_seen() -> None:
    image, mask = _image(512, 512), _tiny_defect()
    sampler = CropSampler(64, defect_rate=0.0, seed=1)
    assert np.mean([sampler(image, mask)[1].any() for _ in range(1000)]) < 0.06


def test_defect_crops_do_not_always_centre_the_defect() -> None:
    image, mask = _image(512, 512), _tiny_defect()
    sampler = CropSampler(64, defect_rate=1.0, seed=2)
    offsets = set()
    for _ in range(300):
        crop, crop_mask = sampler(image, mask)
        rows, columns = np.nonzero(crop_mask)
        assert len(rows)  # always on the defect
        offsets.add((int(rows.min()), int(columns.min())))
    assert len(offsets) > 50  # the defect lands at many places within the crop


def test_each_present_class_is_drawn_not_only_the_largest() -> None:
    mask = np.zeros((256, 256), dtype=np.uint8)
    mask[0:100, 0:100] = 1  # a large class-1 region
    mask[250, 250] = 3  # a single class-3 pixel
    image, sampler = _image(256, 256), CropSampler(32, defect_rate=1.0, seed=3)
    seen_small = np.mean([(sampler(image, mask)[1] == 3).any() for _ in range(300)])
    assert 0.35 <= seen_small <= 0.65  # about half the defect crops go to each class


def test_scale_takes_the_crop_from_the_rescaled_image() -> None:
    image = np.zeros((400, 400, 3), dtype=np.uint8)
    image[:, 200:] = 255
    mask = np.zeros((400, 400), dtype=np.uint8)
    mask[:, 200:] = 1
    sampler = CropSampler(64, scale=0.5, seed=0)
    assert sampler.window == 128
    crop, crop_mask = sampler(image, mask)
    assert crop.shape == (64, 64, 3) and crop_mask.shape == (64, 64)
    assert set(np.unique(crop_mask)) <= {0, 1} and ((crop_mask == 1) == (crop[..., 0] > 127)).mean() > 0.95


def test_validation_crops_depend_on_the_sample_only() -> None:
    image, mask = _image(512, 512), _tiny_defect()
    val = CropSampler(64, defect_rate=0.5, seed=0, deterministic=True)
    first = [_locate(val(image, mask, index=i)[0]) for i in range(20)]
    val.set_random_seed(123)  # the engine reseeds every epoch: validation crops must not move
    again = [_locate(val(image, mask, index=i)[0]) for i in reversed(range(20))][::-1]
    assert first == again
    assert len(set(first)) > 10  # different samples, different crops
    fresh = CropSampler(64, defect_rate=0.5, seed=0, deterministic=True)
    assert _locate(fresh(image, mask, index=7)[0]) == first[7]
    with pytest.raises(ValueError, match="needs the sample index"):
        val(image, mask)


def test_training_crops_repeat_after_reseeding() -> None:
    image, mask = _image(512, 512), _tiny_defect()
    train = CropSampler(64, defect_rate=0.5, seed=5)
    first = [_locate(train(image, mask)[0]) for _ in range(10)]
    train.set_random_seed(5)
    assert [_locate(train(image, mask)[0]) for _ in range(10)] == first
    assert len(set(first)) > 1


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"size": 0}, "crop size must be positive"),
    ({"size": 64, "scale": 0.0}, "crop scale"),
    ({"size": 64, "defect_rate": 1.5}, "defect_rate"),
])
def test_bad_sampler_settings_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CropSampler(**kwargs)


# --- crop labels and the dataset --------------------------------------------------------------

LABELS = LabelSpace(("crack", "spot", "scratch"), good_label="good", has_good=True)


@pytest.mark.parametrize(("mask_values", "image_label", "has_mask", "seg_mode", "expected"), [
    ({}, "crack", True, "multiclass", "good"),  # a crop of a cracked image that misses the crack
    ({1: 10}, "crack", True, "multiclass", "crack"),
    ({1: 3, 3: 9}, "crack", True, "multiclass", "scratch"),  # mmseg masks: the dominant class of the crop
    ({1: 5, 3: 5}, "scratch", True, "multiclass", "crack"),  # ties: the lower index, as data.masks does
    ({}, "crack", False, "multiclass", "crack"),  # no mask: nothing says where the defect is
    ({1: 4}, "spot", True, "binary", "spot"),  # binary targets name no class: the image's class
    ({}, "good", True, "multiclass", "good"),
])
def test_a_crop_is_labelled_by_what_it_shows(mask_values, image_label, has_mask, seg_mode, expected) -> None:
    mask = np.zeros((8, 8), dtype=np.uint8)
    flat = mask.reshape(-1)
    start = 0
    for value, count in mask_values.items():
        flat[start:start + count] = 1 if seg_mode == "binary" else value
        start += count
    target = crop_target(mask, image_target=LABELS.image_index(image_label), labels=LABELS, seg_mode=seg_mode,
                         has_mask=has_mask)
    assert LABELS.image_classes[target] == expected


def test_without_a_good_class_a_defect_free_crop_keeps_the_image_label() -> None:
    labels = LabelSpace(("crack", "spot"), has_good=False)
    assert crop_target(np.zeros((4, 4)), image_target=1, labels=labels, seg_mode="multiclass", has_mask=True) == 1


@pytest.fixture
def large_images(tmp_path) -> tuple[str, pd.DataFrame]:
    """Three 300 x 200 images (one 'crack' with a 4 x 4 px defect, two 'good') and their manifest."""
    rows = []
    for name, label in (("a", "crack"), ("b", "good"), ("c", "good")):
        image = _image(200, 300)
        Image.fromarray(image).save(tmp_path / f"{name}.png")
        mask = np.zeros((200, 300), dtype=np.uint8)
        if label == "crack":
            mask[150:154, 250:254] = 255
        Image.fromarray(mask).save(tmp_path / f"{name}_mask.png")
        rows.append({"image_path": f"{name}.png", "mask_path": f"{name}_mask.png", "label": label,
                     "split": "train", "status": "accepted", "mask_type": "binary"})
    return str(tmp_path), pd.DataFrame(rows)


def test_dataset_items_are_crops_with_crop_labels(large_images) -> None:
    root, manifest = large_images
    labels = LabelSpace(("crack",), good_label="good", has_good=True)
    dataset = ManifestDataset(manifest, root=root, split="train", labels=labels, transform=None,
                              crop=CropSampler(64, defect_rate=0.5, seed=0))
    items = [dataset[0] for _ in range(200)]
    assert all(item["image"].shape == (3, 64, 64) and item["mask"].shape == (64, 64) for item in items)
    shows_defect = [bool((item["mask"] > 0).any()) for item in items]
    assert all(item["label"].item() == (1 if shown else 0) for item, shown in zip(items, shows_defect))
    assert 0.4 <= np.mean(shows_defect) <= 0.65
    assert "crop=CropSampler(size=64" in repr(dataset)


def test_loaders_reseed_the_crop_sampler_so_epochs_repeat(large_images) -> None:
    root, manifest = large_images
    labels = LabelSpace(("crack",), good_label="good", has_good=True)
    dataset = ManifestDataset(manifest, root=root, split="train", labels=labels, transform=None,
                              crop=CropSampler(64, defect_rate=0.5, seed=0))

    def epoch() -> list[tuple[int, int]]:
        loader = create_dataloader(dataset, batch_size=3, shuffle=False, num_workers=0, seed=11)
        return [_locate((image.permute(1, 2, 0) * 255).round().byte().numpy())
                for batch in loader for image in batch["image"]]

    first = epoch()
    assert epoch() == first  # a fresh loader with the same seed reseeds the sampler
    reseed_augmentations(dataset, 99)
    moved = [_locate(dataset[i]["image"].permute(1, 2, 0).mul(255).round().byte().numpy()) for i in range(3)]
    assert moved != first


def test_preview_transform_crops_then_augments() -> None:
    seen = {}

    def transform(*, image, mask):
        seen["shape"] = image.shape
        return {"image": image, "mask": mask}

    view = CroppedTransform(CropSampler(32, seed=0), transform)
    view.set_random_seed(1)
    out = view(image=_image(100, 100), mask=np.zeros((100, 100), dtype=np.uint8))
    assert seen["shape"] == (32, 32, 3) and out["mask"].shape == (32, 32)


def test_the_engine_reseeds_crops_each_epoch_so_a_resumed_epoch_repeats_them(large_images) -> None:
    """Old ``_seed_epoch`` reseeded only ``dataset.transform``: the crops of a resumed epoch differed."""
    from defect_pipeline.ml.engine.loop import _seed_epoch

    root, manifest = large_images
    labels = LabelSpace(("crack",), good_label="good", has_good=True)
    dataset = ManifestDataset(manifest, root=root, split="train", labels=labels, transform=None,
                              crop=CropSampler(64, defect_rate=0.5, seed=0))
    loader = create_dataloader(dataset, batch_size=3, shuffle=True, num_workers=0, seed=42)

    def epoch(number: int) -> list[tuple[int, int]]:
        _seed_epoch(loader, 42, number)
        return [_locate((image.permute(1, 2, 0) * 255).round().byte().numpy())
                for batch in loader for image in batch["image"]]

    third = epoch(3)
    epoch(4)
    assert epoch(3) == third  # as after a resume at epoch 3
