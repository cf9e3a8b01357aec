"""ManifestDataset, labels_from_manifest, create_dataloader and class_counts.

Two small fixtures: the synthetic demo dataset (class folders, binary masks) run through the
data chain exactly as the Kedro nodes do, and a hand-written mmseg-style manifest with palette
(class-index) masks. No Kedro session is started.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import defect_pipeline.ml.dataset as dataset_module
from defect_pipeline.data.imageio import load_mask
from defect_pipeline.ml.augment import build_transform
from defect_pipeline.ml.dataset import (
    ManifestDataset,
    SampleReadError,
    class_counts,
    create_dataloader,
    labels_from_manifest,
)
from defect_pipeline.ml.labels import LabelSpace
from tests.conftest import prepared_demo

IMAGE_SIZE = 32
RECIPE = [
    {"name": "HorizontalFlip", "p": 0.5},
    {"name": "Rotate", "limit": 40, "p": 1.0},
    {"name": "RandomBrightnessContrast", "p": 0.8},
]


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame, LabelSpace]:
    """The demo dataset (4 images per class + 4 good, 64 px) through organize → check → masks → split."""
    root = tmp_path_factory.mktemp("demo") / "raw"
    _, _, manifest, scan_summary = prepared_demo(root, images_per_class=4, good_images=4, image_size=64)
    labels = labels_from_manifest(manifest, defect_classes=scan_summary["classes"], good_label="good")
    return root, manifest, labels


def _palette_png(path: Path, values: np.ndarray) -> None:
    """A mode-P PNG whose pixel indices are ``values`` (the mmseg class-index encoding)."""
    height, width = values.shape
    image = Image.frombytes("P", (width, height), values.astype(np.uint8).tobytes())
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0, 0, 0] * 252)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


MMSEG_CLASSES = ("inclusion", "patches", "scratches")


@pytest.fixture
def mmseg(tmp_path: Path) -> tuple[Path, pd.DataFrame, LabelSpace]:
    """img_dir/ + ann_dir/ with palette masks, and its manifest written by hand."""
    root = tmp_path / "mmseg"
    rng = np.random.default_rng(0)
    rows = []
    masks = {
        "a": np.pad(np.full((6, 8), 2), ((2, 12), (3, 13))),  # class 2 (patches)
        "b": np.zeros((20, 24)),  # background only
        "c": np.zeros((20, 24)),  # classes 1 and 3
        "d": np.pad(np.full((4, 4), 3), ((0, 16), (0, 20))),  # quarantined row
        "e": np.pad(np.full((4, 4), 1), ((0, 16), (0, 20))),  # val split
    }
    masks["c"][0:5, 0:5] = 1
    masks["c"][10:20, 10:24] = 3
    splits = {"a": "train", "b": "train", "c": "train", "d": None, "e": "val"}
    labels = {"a": "patches", "b": "inclusion", "c": "scratches", "d": "scratches", "e": "inclusion"}
    for stem, values in masks.items():
        split_dir = splits[stem] or "train"
        image_rel = f"img_dir/{split_dir}/{stem}.jpg"
        mask_rel = f"ann_dir/{split_dir}/{stem}.png"
        (root / image_rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, size=(20, 24, 3), dtype=np.uint8)).save(root / image_rel)
        _palette_png(root / mask_rel, values)
        rows.append({
            "sample_id": stem, "image_path": image_rel, "mask_path": mask_rel, "label": labels[stem],
            "split": splits[stem], "status": "accepted" if splits[stem] else "quarantined",
            "width": 24, "height": 20, "exif_orientation": 1, "mask_type": "class_index",
            "mask_transform": "none",
        })
    manifest = pd.DataFrame(rows)
    for column in ("sample_id", "image_path", "mask_path", "label", "split", "status", "mask_type", "mask_transform"):
        manifest[column] = manifest[column].astype("string")
    return root, manifest, LabelSpace(MMSEG_CLASSES, has_good=False)


def _dataset(demo, split: str = "train", transform=None, **kwargs) -> ManifestDataset:
    root, manifest, labels = demo
    return ManifestDataset(manifest, root=str(root), split=split, labels=labels, transform=transform, **kwargs)


# --- selection and items -----------------------------------------------------------------------


def test_length_follows_split_and_status(demo) -> None:
    root, manifest, labels = demo
    for split in ("train", "val", "test"):
        expected = manifest[(manifest["status"] == "accepted") & (manifest["split"] == split)]
        dataset = _dataset(demo, split)
        assert len(dataset) == len(expected) > 0
        assert dataset.image_paths == list(expected["image_path"])
        assert dataset.sample_ids == list(expected["sample_id"])

    quarantined = manifest.copy()
    first_train = quarantined.index[quarantined["split"] == "train"][0]
    quarantined.loc[first_train, ["status", "split"]] = ["quarantined", pd.NA]
    dataset = ManifestDataset(quarantined, root=root, split="train", labels=labels, transform=None)
    assert len(dataset) == len(_dataset(demo, "train")) - 1
    assert manifest.loc[first_train, "image_path"] not in dataset.image_paths
    assert len(_dataset(demo, "nonexistent")) == 0


def test_items_have_the_documented_shapes_and_dtypes(demo) -> None:
    transform = build_transform(RECIPE, image_size=IMAGE_SIZE, train=True, seed=0)
    dataset = _dataset(demo, "train", transform)
    item = dataset[1]
    assert set(item) == {"image", "mask", "label", "index"}
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    assert item["mask"].dtype == torch.int64 and item["mask"].shape == (IMAGE_SIZE, IMAGE_SIZE)
    assert item["label"].dtype == torch.int64 and item["label"].shape == ()
    assert item["index"] == 1
    assert int(item["label"]) == dataset.labels.image_index(dataset.sample_labels[1])

    raw = _dataset(demo, "train")[0]  # no transform: [0, 1] floats at the stored size
    assert raw["image"].shape == (3, 64, 64) and 0.0 <= raw["image"].min() <= raw["image"].max() <= 1.0
    image, mask = dataset.read_sample(1)  # untransformed, mask already mapped to class indices
    assert image.dtype == np.uint8 and image.shape == (64, 64, 3) and mask.shape == (64, 64)
    assert np.array_equal(dataset.load_raw(1)[1], mask)


def test_binary_masks_become_class_indices_and_good_images_all_zero(demo) -> None:
    root, manifest, labels = demo
    dataset = _dataset(demo, "train")
    seen_good = seen_defect = False
    for i in range(len(dataset)):
        mask = dataset[i]["mask"].numpy()
        label = dataset.sample_labels[i]
        if label == "good":
            seen_good = True
            assert dataset.mask_paths[i] is None
            assert not mask.any()
        else:
            seen_defect = True
            foreground = load_mask(root / dataset.mask_paths[i], mask_type="binary", shape=mask.shape)
            assert foreground.any()
            np.testing.assert_array_equal(mask, foreground.astype(np.int64) * labels.seg_index(label))
            assert set(np.unique(mask)) == {0, 1 + labels.defect_classes.index(label)}
    assert seen_good and seen_defect

    binary = _dataset(demo, "train", seg_mode="binary")
    for i in range(len(binary)):
        assert set(np.unique(binary[i]["mask"].numpy())) <= {0, 1}


def test_class_index_masks_are_used_as_they_are(mmseg) -> None:
    root, manifest, labels = mmseg
    dataset = ManifestDataset(manifest, root=root, split="train", labels=labels, transform=None)
    assert dataset.sample_ids == ["a", "b", "c"]  # "d" is quarantined, "e" is in val
    masks = {sid: dataset[i]["mask"].numpy() for i, sid in enumerate(dataset.sample_ids)}
    assert set(np.unique(masks["a"])) == {0, 2} and (masks["a"] == 2).sum() == 48
    assert not masks["b"].any()
    assert set(np.unique(masks["c"])) == {0, 1, 3}
    assert [int(dataset[i]["label"]) for i in range(3)] == [1, 0, 2]  # no good class: index = defect index

    # a resize keeps class indices (nearest neighbour), never blends them
    resized = ManifestDataset(manifest, root=root, split="train", labels=labels,
                              transform=build_transform(None, image_size=37, train=False))
    assert set(np.unique(resized[2]["mask"].numpy())) == {0, 1, 3}

    binary = ManifestDataset(manifest, root=root, split="train", labels=labels, transform=None, seg_mode="binary")
    np.testing.assert_array_equal(binary[2]["mask"].numpy(), (masks["c"] > 0).astype(np.int64))
    assert len(ManifestDataset(manifest, root=root, split="val", labels=labels, transform=None)) == 1


def test_class_index_above_the_label_space_is_a_clear_error(mmseg) -> None:
    root, manifest, _ = mmseg
    small = LabelSpace(("inclusion", "patches"), has_good=False)  # segmentation indices 0..2
    manifest = manifest[manifest["label"] != "scratches"].reset_index(drop=True)
    manifest.loc[manifest["sample_id"] == "b", "mask_path"] = "ann_dir/train/c.png"  # holds index 3
    dataset = ManifestDataset(manifest, root=root, split="train", labels=small, transform=None)
    with pytest.raises(SampleReadError, match=r"c\.png.*index 3"):
        dataset[dataset.sample_ids.index("b")]


def test_construction_reads_no_image(demo, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = dataset_module.load_image

    def counting(path):
        calls.append(str(path))
        return real(path)

    monkeypatch.setattr(dataset_module, "load_image", counting)
    dataset = _dataset(demo, "train", build_transform(RECIPE, image_size=IMAGE_SIZE, train=True))
    assert calls == []
    assert class_counts(dataset) and calls == []
    dataset[0]
    dataset[0]
    assert len(calls) == 2 and calls[0].endswith(dataset.image_paths[0])  # read per access, never cached


def test_a_broken_file_names_the_file(demo, tmp_path: Path) -> None:
    root, manifest, labels = demo
    broken_root = tmp_path / "broken"
    broken_root.mkdir()
    dataset = ManifestDataset(manifest, root=broken_root, split="train", labels=labels, transform=None)
    path = broken_root / dataset.image_paths[0]
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not an image")
    with pytest.raises(SampleReadError, match=r"cannot read image .*" + path.name + r".*quarantined"):
        dataset[0]
    with pytest.raises(SampleReadError, match=dataset.image_paths[1].split("/")[-1]):
        dataset[1]  # missing on disk


def test_constructor_rejects_bad_arguments(demo) -> None:
    root, manifest, labels = demo
    with pytest.raises(ValueError, match="seg_mode"):
        _dataset(demo, seg_mode="instance")
    with pytest.raises(ValueError, match="label 'good' is not in the label space"):
        ManifestDataset(manifest, root=root, split="train", transform=None,
                        labels=LabelSpace(labels.defect_classes, has_good=False))
    with pytest.raises(ValueError, match="lacks the column"):
        ManifestDataset(manifest.drop(columns="status"), root=root, split="train", labels=labels, transform=None)


# --- labels and counts ---------------------------------------------------------------------------


def test_labels_from_manifest(demo) -> None:
    _, manifest, labels = demo
    assert labels == LabelSpace(("crack", "scratch", "spot"), "good", True)
    no_good = manifest.copy()
    no_good.loc[no_good["label"] == "good", "status"] = "quarantined"
    space = labels_from_manifest(no_good, defect_classes=["crack", "scratch", "spot"], good_label="good")
    assert space.has_good is False and space.image_classes == ("crack", "scratch", "spot")
    with pytest.raises(ValueError, match=r"\['spot'\]"):
        labels_from_manifest(manifest, defect_classes=["crack", "scratch"], good_label="good")


def test_class_counts_come_from_the_manifest(demo, monkeypatch: pytest.MonkeyPatch) -> None:
    _, manifest, labels = demo
    dataset = _dataset(demo, "train")
    monkeypatch.setattr(dataset_module, "load_image", lambda path: pytest.fail("class_counts read an image"))
    train = manifest[(manifest["status"] == "accepted") & (manifest["split"] == "train")]
    expected = [int((train["label"] == name).sum()) for name in labels.image_classes]
    assert class_counts(dataset) == expected
    assert sum(class_counts(torch.utils.data.Subset(dataset, [0, 1]))) == 2


# --- loaders -----------------------------------------------------------------------------------


def _epochs(dataset: ManifestDataset, *, seed: int, num_workers: int) -> list[dict]:
    loader = create_dataloader(dataset, batch_size=3, shuffle=True, num_workers=num_workers, seed=seed)
    return [batch for _ in range(2) for batch in loader]


def _same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        all(torch.equal(x[key], y[key]) for key in ("index", "image", "mask")) for x, y in zip(a, b)
    )


@pytest.mark.parametrize("num_workers", [0, 2])
def test_same_seed_gives_identical_augmented_batches(demo, num_workers: int) -> None:
    dataset = _dataset(demo, "train", build_transform(RECIPE, image_size=IMAGE_SIZE, train=True))
    first = _epochs(dataset, seed=7, num_workers=num_workers)
    second = _epochs(dataset, seed=7, num_workers=num_workers)  # fresh loader, same dataset object
    assert _same(first, second)
    assert first[0]["image"].shape[1:] == (3, IMAGE_SIZE, IMAGE_SIZE)
    other = _epochs(dataset, seed=8, num_workers=num_workers)
    assert not _same(first, other)
    per_epoch = len(first) // 2  # the second epoch draws new order/augmentations
    assert not _same(first[:per_epoch], first[per_epoch:])

    # the loader seed also drives the albumentations streams (Compose ignores global seeds)
    def ordered(seed: int) -> list[dict]:
        loader = create_dataloader(dataset, batch_size=3, shuffle=False, num_workers=num_workers, seed=seed)
        return list(loader)

    a, b = ordered(7), ordered(8)
    assert all(torch.equal(x["index"], y["index"]) for x, y in zip(a, b))
    assert not _same(a, b)
    assert _same(a, ordered(7))


def test_loader_settings(demo) -> None:
    dataset = _dataset(demo, "train")
    loader = create_dataloader(dataset, batch_size=3, shuffle=False, num_workers=0, seed=0, drop_last=True)
    assert loader.pin_memory == torch.cuda.is_available()
    assert loader.persistent_workers is False and loader.drop_last is True
    assert len(loader) == len(dataset) // 3
    batch = next(iter(loader))
    assert batch["index"].tolist() == [0, 1, 2] and batch["label"].dtype == torch.int64
    workers = create_dataloader(dataset, batch_size=3, shuffle=True, num_workers=1, seed=0)
    assert workers.persistent_workers is False and workers.worker_init_fn is not None
    with pytest.raises(ValueError, match="empty"):
        create_dataloader(_dataset(demo, "nonexistent"), batch_size=2, shuffle=True, num_workers=0, seed=0)
