"""Tests for the synthetic demo dataset generator (defect_pipeline.data.demo)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defect_pipeline.data.demo import (
    DEMO_CLASSES,
    GOOD_LABEL,
    MARKER_FILE,
    DemoSpec,
    demo_signature,
    write_demo_dataset,
)
from defect_pipeline.data.demo_render import render_sample

SMALL = DemoSpec(seed=7, images_per_class=3, good_images=2, image_size=64)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_layout_and_counts(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    summary = write_demo_dataset(root, SMALL)

    assert summary["generated"] is True
    assert summary["seed"] == SMALL.seed
    assert summary["signature"] == demo_signature(SMALL)
    assert summary["counts"] == {"scratch": 3, "spot": 3, "crack": 3, "good": 2}
    assert summary["files_written"] == 3 * 3 * 2 + 2
    assert (root / MARKER_FILE).is_file()
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted([*DEMO_CLASSES, GOOD_LABEL])

    for label in DEMO_CLASSES:
        names = sorted(p.name for p in (root / label).iterdir())
        expected = sorted([f"{label}_{i:04d}.jpg" for i in range(3)] + [f"{label}_{i:04d}_mask.png" for i in range(3)])
        assert names == expected
    assert sorted(p.name for p in (root / GOOD_LABEL).iterdir()) == ["good_0000.jpg", "good_0001.jpg"]

    with Image.open(root / "scratch" / "scratch_0000.jpg") as img:
        assert img.format == "JPEG" and img.mode == "RGB" and img.size == (64, 64)
        assert not img.getexif()


def test_masks_binary_nonempty_and_absent_for_good(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    write_demo_dataset(root, SMALL)
    for label in DEMO_CLASSES:
        for mask_path in (root / label).glob("*_mask.png"):
            with Image.open(mask_path) as mask:
                assert mask.format == "PNG" and mask.mode == "L" and mask.size == (64, 64)
                arr = np.asarray(mask)
            assert set(np.unique(arr).tolist()) <= {0, 255}
            assert int((arr == 255).sum()) >= 20
    assert not list((root / GOOD_LABEL).glob("*_mask*"))


def test_png_format(tmp_path: Path) -> None:
    spec = dataclasses.replace(SMALL, image_format="png", classes=("spot",), good_images=1)
    root = tmp_path / "demo"
    summary = write_demo_dataset(root, spec)
    assert summary["counts"] == {"spot": 3, "good": 1}
    with Image.open(root / "spot" / "spot_0000.png") as img:
        assert img.format == "PNG"
    assert not (root / "scratch").exists()


def test_render_sample_contract() -> None:
    for label in (*DEMO_CLASSES, GOOD_LABEL):
        image, mask = render_sample(label, rng=np.random.default_rng(0), image_size=48)
        assert image.shape == (48, 48, 3) and image.dtype == np.uint8
        if label == GOOD_LABEL:
            assert mask is None
        else:
            assert mask is not None and mask.shape == (48, 48) and mask.dtype == np.uint8
            assert set(np.unique(mask).tolist()) == {0, 255}
    with pytest.raises(ValueError):
        render_sample("dent", rng=np.random.default_rng(0), image_size=64)


def test_deterministic_and_seed_dependent(tmp_path: Path) -> None:
    write_demo_dataset(tmp_path / "a", SMALL)
    write_demo_dataset(tmp_path / "b", SMALL)
    write_demo_dataset(tmp_path / "c", dataclasses.replace(SMALL, seed=8))
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert a == b
    assert a.keys() == c.keys()
    images = [k for k in a if k != MARKER_FILE]
    assert all(a[k] != c[k] for k in images)


def test_samples_independent_of_generation_order(tmp_path: Path) -> None:
    # Sample i of a label must not depend on how many samples/classes are generated.
    write_demo_dataset(tmp_path / "full", SMALL)
    write_demo_dataset(tmp_path / "sub", dataclasses.replace(SMALL, images_per_class=1, classes=("crack",)))
    for rel in ("crack/crack_0000.jpg", "crack/crack_0000_mask.png", "good/good_0000.jpg"):
        assert (tmp_path / "full" / rel).read_bytes() == (tmp_path / "sub" / rel).read_bytes()


def test_idempotent_second_call(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    write_demo_dataset(root, SMALL)
    before = _mtimes(root)
    summary = write_demo_dataset(root, SMALL)
    assert summary["generated"] is False
    assert summary["files_written"] == 0
    assert summary["signature"] == demo_signature(SMALL)
    assert _mtimes(root) == before


def test_changed_spec_regenerates_and_keeps_foreign_files(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    write_demo_dataset(root, SMALL)
    (root / "notes.txt").write_text("mine")
    (root / "spot" / "keep.txt").write_text("mine too")
    old = _files(root)

    spec2 = dataclasses.replace(SMALL, seed=99, images_per_class=2, classes=("scratch", "spot"))
    summary = write_demo_dataset(root, spec2)
    assert summary["generated"] is True
    assert demo_signature(spec2) != demo_signature(SMALL)
    assert f"signature: {demo_signature(spec2)}" in (root / MARKER_FILE).read_text()
    # Stale files of the old spec are gone, foreign files are kept.
    assert not (root / "crack").exists()
    assert not (root / "scratch" / "scratch_0002.jpg").exists()
    assert (root / "notes.txt").read_text() == "mine"
    assert (root / "spot" / "keep.txt").read_text() == "mine too"
    assert (root / "scratch" / "scratch_0000.jpg").read_bytes() != old["scratch/scratch_0000.jpg"]
    assert write_demo_dataset(root, spec2)["generated"] is False


def test_incomplete_dataset_is_regenerated(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    write_demo_dataset(root, SMALL)
    reference = _files(root)
    (root / "spot" / "spot_0001_mask.png").unlink()
    assert write_demo_dataset(root, SMALL)["generated"] is True
    assert _files(root) == reference

    # Interrupted run: marker left in its in-progress state (no signature) -> regenerate.
    marker = root / MARKER_FILE
    marker.write_text(marker.read_text().replace(f"signature: {demo_signature(SMALL)}", "signature: pending"))
    (root / "crack" / "crack_0002.jpg").unlink()
    assert write_demo_dataset(root, SMALL)["generated"] is True
    assert _files(root) == reference


def test_refuses_foreign_non_empty_folder(tmp_path: Path) -> None:
    root = tmp_path / "user_data"
    root.mkdir()
    (root / "photo.jpg").write_bytes(b"not ours")
    with pytest.raises(FileExistsError) as excinfo:
        write_demo_dataset(root, SMALL)
    assert str(root) in str(excinfo.value)
    assert "refus" in str(excinfo.value)
    assert [p.name for p in root.iterdir()] == ["photo.jpg"]

    empty = tmp_path / "empty"
    empty.mkdir()
    assert write_demo_dataset(empty, SMALL)["generated"] is True


def test_marker_says_synthetic(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    write_demo_dataset(root, SMALL)
    text = (root / MARKER_FILE).read_text()
    assert "SYNTHETIC" in text and "synthetic" in text
    assert f"seed: {SMALL.seed}" in text
    assert f"signature: {demo_signature(SMALL)}" in text
    assert "_mask.png" in text


def test_signature_covers_every_field() -> None:
    base = demo_signature(DemoSpec())
    assert base == demo_signature(DemoSpec())
    assert len(base) == 64
    variants = [
        DemoSpec(seed=1),
        DemoSpec(images_per_class=41),
        DemoSpec(good_images=0),
        DemoSpec(image_size=96),
        DemoSpec(classes=("crack", "spot", "scratch")),
        DemoSpec(image_format="png"),
    ]
    assert len({base, *(demo_signature(v) for v in variants)}) == len(variants) + 1


@pytest.mark.parametrize(
    "bad",
    [
        {"classes": ("dent",)},
        {"classes": ()},
        {"image_format": "bmp"},
        {"image_size": 8},
        {"seed": -1},
        {"images_per_class": 0},
    ],
)
def test_invalid_spec_rejected(tmp_path: Path, bad: dict) -> None:
    with pytest.raises(ValueError):
        write_demo_dataset(tmp_path / "demo", dataclasses.replace(SMALL, **bad))
    assert not (tmp_path / "demo").exists()


@pytest.mark.parametrize("label", DEMO_CLASSES)
def test_defects_stand_out_from_background(label: str) -> None:
    # Mean gray inside the mask must differ clearly from a ring just outside it (learnable task).
    diffs = []
    for i in range(12):
        image, mask = render_sample(label, rng=np.random.default_rng([123, i]), image_size=96)
        assert mask is not None
        gray = image.astype(np.float64).mean(axis=2)
        inside = mask > 0
        ring = np.zeros_like(inside)
        ys, xs = np.nonzero(inside)
        for dy in range(-6, 7):  # dilate by 6 px (vectorised per offset)
            for dx in range(-6, 7):
                y2, x2 = np.clip(ys + dy, 0, 95), np.clip(xs + dx, 0, 95)
                ring[y2, x2] = True
        ring &= ~inside
        diffs.append(gray[inside].mean() - gray[ring].mean())
    diffs = np.asarray(diffs)
    if label == "scratch":  # bright or dark
        assert np.all(np.abs(diffs) > 12), diffs
    else:  # spots and cracks are darker
        assert np.all(diffs < -15), diffs
