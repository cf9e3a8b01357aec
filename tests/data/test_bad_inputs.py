"""Bad and unusual raw inputs through the whole ``data`` chain (organize → check → masks → split → report).

Each test builds a small raw folder in its own ``tmp_path`` with :mod:`corpus` (a few good samples
plus the case under test), runs the library chain exactly as the Kedro nodes do, and asserts two
things:

* the specific outcome: the row's ``status`` and ``reason`` code (or a flag), and where it matters
  what :func:`~defect_pipeline.data.imageio.load_image` / ``load_mask`` hand to a model;
* the global accounting invariant: every row is accepted or quarantined, every file on disk is
  in exactly one manifest row (as ``image_path`` or ``mask_path``) or listed in
  ``accounting.ignored_files``, and ``report["accounting"]["balanced"]`` is true.

No Kedro session is started; the process-pool path is exercised once (``check.num_workers: 2``).
"""

from __future__ import annotations

import copy
import sys
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from defect_pipeline.config import DataParams
from defect_pipeline.data.imageio import load_image, load_mask
from defect_pipeline.data.layouts import RawDataError
from defect_pipeline.data.report import render_data_report_markdown
from defect_pipeline.pipelines.data import nodes

sys.path.insert(0, str(Path(__file__).parent))
import corpus  # noqa: E402

SIZE = corpus.DEFAULT_SIZE  # (width, height) of the fixture images
DEFECT_AREA = int((corpus.binary_mask_array(SIZE) > 0).sum())


# --- running the chain ----------------------------------------------------------------------


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def make_params(root: Path, **overrides: Any) -> DataParams:
    """The ``data`` parameter block for ``root``: in-process decoding, no progress bar."""
    base = {"raw_root": str(root), "check": {"num_workers": 0, "progress": False}}
    return DataParams.model_validate(_merge(base, overrides))


def run_chain(root: Path, **overrides: Any) -> tuple[pd.DataFrame, dict, pd.DataFrame]:
    """Run organize → check → validate_masks → split → report on ``root``.

    Returns ``(manifest, report, quarantine)``. Keyword arguments override the ``data`` block,
    e.g. ``run_chain(root, split={"strategy": "stratified"})``.
    """
    params = make_params(root, **overrides)
    raw_source = {"source": "user", "raw_root": str(root)}
    manifest, scan_summary = nodes.organize(raw_source, params)
    manifest = nodes.check(manifest, raw_source, scan_summary, params)
    manifest = nodes.validate_masks(manifest, scan_summary, params)
    manifest, split_summary = nodes.split(manifest, params)
    report, _markdown, quarantine = nodes.report(manifest, raw_source, scan_summary, split_summary, params)
    return manifest, report, quarantine


# --- assertions -----------------------------------------------------------------------------


def files_on_disk(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def assert_accounted(root: Path, manifest: pd.DataFrame, report: dict, quarantine: pd.DataFrame) -> None:
    """The global invariant: nothing lost, nothing counted twice, the report balances."""
    statuses = Counter(manifest["status"])
    assert set(statuses) <= {"accepted", "quarantined"}, statuses
    assert statuses["accepted"] + statuses["quarantined"] == len(manifest)

    accounting = report["accounting"]
    assert accounting["balanced"] is True
    assert accounting["samples"] == len(manifest)
    assert accounting["accepted"] == statuses["accepted"]
    assert accounting["quarantined"] == statuses["quarantined"]
    assert len(quarantine) == statuses["quarantined"]

    paths = list(manifest["image_path"].dropna()) + list(manifest["mask_path"].dropna())
    repeated = {p: n for p, n in Counter(paths).items() if n > 1}
    assert not repeated, f"files in more than one manifest slot: {repeated}"
    on_disk = files_on_disk(root)
    assert set(paths) <= on_disk, f"manifest names files that do not exist: {set(paths) - on_disk}"
    assert accounting["files_in_manifest"] == len(paths) == accounting["files_scanned"]

    ignored = accounting["ignored_files"]

    def is_ignored(path: str) -> bool:
        parents = [p.as_posix() + "/" for p in PurePosixPath(path).parents if p.as_posix() != "."]
        return path in ignored or any(parent in ignored for parent in parents)

    in_rows = set(paths)
    lost = sorted(f for f in on_disk if f not in in_rows and not is_ignored(f))
    assert not lost, f"files neither in the manifest nor listed as ignored: {lost}"
    both = sorted(f for f in in_rows if is_ignored(f))
    assert not both, f"files both in the manifest and ignored: {both}"


def row_of(manifest: pd.DataFrame, path: str) -> pd.Series:
    """The single manifest row whose image_path (or, for orphans, mask_path) is ``path``."""
    hits = manifest[(manifest["image_path"] == path) | (manifest["image_path"].isna() & (manifest["mask_path"] == path))]
    assert len(hits) == 1, f"expected one row for {path}, found {len(hits)}"
    return hits.iloc[0]


def assert_quarantined(row: pd.Series, reason_code: str) -> None:
    assert row["status"] == "quarantined", row.to_dict()
    assert row["reason"].startswith(reason_code), row["reason"]
    assert pd.isna(row["split"])


def assert_accepted(row: pd.Series, *flags: str) -> None:
    assert row["status"] == "accepted", row.to_dict()
    assert row["reason"] == ""
    assert row["split"] in ("train", "val", "test")
    present = set(str(row["flags"]).split(";"))
    for flag in flags:
        assert flag in present, (flag, row["flags"])


def flags_of(row: pd.Series) -> set[str]:
    return {f for f in str(row["flags"]).split(";") if f}


# --- fixture layout -------------------------------------------------------------------------


def write_baseline(root: Path, defect_class: str = "scratch", n_defect: int = 3, n_good: int = 2,
                   seed: int = 1000) -> None:
    """A few good samples so every case runs next to usable data: ``<Class>/`` with masks, ``good/`` without."""
    for i in range(n_defect):
        corpus.write_sample(root / defect_class, f"base_{i:02d}", seed + i)
    for i in range(n_good):
        corpus.write_image(root / "good" / f"good_{i:02d}.jpg", seed + 500 + i)


# --- file-level decode failures -------------------------------------------------------------


def test_truncated_jpeg_is_quarantined_as_corrupt(tmp_path: Path) -> None:
    write_baseline(tmp_path)
    corpus.write_truncated_jpeg(tmp_path / "scratch" / "cut.jpg", seed=1)
    corpus.write_mask(tmp_path / "scratch" / "cut_mask.png")

    manifest, report, quarantine = run_chain(tmp_path)

    row = row_of(manifest, "scratch/cut.jpg")
    assert_quarantined(row, "image_corrupt")
    assert row["mask_path"] == "scratch/cut_mask.png"
    assert report["quarantine_reasons"] == {"image_corrupt": 1}
    assert "scratch/cut.jpg" in set(quarantine["file"])
    assert_accounted(tmp_path, manifest, report, quarantine)


def test_zero_byte_file_is_quarantined_as_empty(tmp_path: Path) -> None:
    write_baseline(tmp_path)
    corpus.write_zero_byte(tmp_path / "scratch" / "zero.jpg")
    corpus.write_mask(tmp_path / "scratch" / "zero_mask.png")

    manifest, report, quarantine = run_chain(tmp_path)

    assert_quarantined(row_of(manifest, "scratch/zero.jpg"), "image_empty_file")
    assert_accounted(tmp_path, manifest, report, quarantine)


def test_text_file_named_png_is_not_an_image(tmp_path: Path) -> None:
    write_baseline(tmp_path)
    corpus.write_text_as_image(tmp_path / "good" / "fake.png")

    manifest, report, quarantine = run_chain(tmp_path)

    assert_quarantined(row_of(manifest, "good/fake.png"), "image_not_an_image")
    assert_accounted(tmp_path, manifest, report, quarantine)


def test_mask_with_other_size_than_image_is_size_mismatch(tmp_path: Path) -> None:
    write_baseline(tmp_path)
    corpus.write_image(tmp_path / "scratch" / "odd.jpg", seed=2, size=(40, 40))
    corpus.write_mask(tmp_path / "scratch" / "odd_mask.png", size=(32, 36))

    manifest, report, quarantine = run_chain(tmp_path)

    row = row_of(manifest, "scratch/odd.jpg")
    assert_quarantined(row, "size_mismatch")
    assert "32x36" in row["reason"] and "40x40" in row["reason"]
    assert_accounted(tmp_path, manifest, report, quarantine)


# --- modes and encodings that are usable after conversion -----------------------------------


def test_jpeg_noise_binary_mask_is_binarized(tmp_path: Path) -> None:
    write_baseline(tmp_path)
    corpus.write_image(tmp_path / "scratch" / "lossy.jpg", seed=3)
    mask_file = corpus.write_jpeg_noise_mask(tmp_path / "scratch" / "lossy_mask.jpg", quality=30)
    with Image.open(mask_file) as lossy_mask:
        raw = np.asarray(lossy_mask)
    assert len(np.unique(raw)) > 2, "fixture must carry JPEG noise"

    manifest, report, quarantine = run_chain(tmp_path)

    row = row_of(manifest, "scratch/lossy.jpg")
    assert row["mask_path"] == "scratch/lossy_mask.jpg"
    assert_accepted(row, "mask_binarized")
    assert report["masks"]["binarized_lossy_masks"] == 1
    loaded = load_mask(mask_file, mask_type="binary", shape=(row["height"], row["width"]))
    assert loaded.dtype == np.uint8 and loaded.shape == (SIZE[1], SIZE[0])
    assert set(np.unique(loaded)) <= {0, 1}
    expected = corpus.binary_mask_array(SIZE) > 0
    iou = (loaded.astype(bool) & expected).sum() / (loaded.astype(bool) | expected).sum()
    assert iou > 0.9, iou
    assert abs(int(loaded.sum()) - DEFECT_AREA) <= 0.1 * DEFECT_AREA
    assert abs(int(row["mask_area"]) - DEFECT_AREA) <= 0.1 * DEFECT_AREA
    assert_accounted(tmp_path, manifest, report, quarantine)


def test_rgba_image_drops_alpha(tmp_path: Path) -> None:
    write_baseline(tmp_path)
    image_file = corpus.write_rgba_png(tmp_path / "scratch" / "clear.png", seed=4)
    corpus.write_mask(tmp_path / "scratch" / "clear_mask.png")

    manifest, report, quarantine = run_chain(tmp_path)

    row = row_of(manifest, "scratch/clear.png")
    assert_accepted(row, "alpha_dropped")
    assert row["mode"] == "RGBA"
    array = load_image(image_file)
    assert array.shape == (SIZE[1], SIZE[0], 3) and array.dtype == np.uint8
    np.testing.assert_array_equal(array, corpus.textured_array(4, SIZE))  # colour kept, alpha gone
    assert_accounted(tmp_path, manifest, report, quarantine)


def test_16bit_png_is_scaled_to_8bit(tmp_path: Path) -> None:
    write_baseline(tmp_path)
    image_file = corpus.write_16bit_png(tmp_path / "scratch" / "deep.png")
    corpus.write_mask(tmp_path / "scratch" / "deep_mask.png")

    manifest, report, quarantine = run_chain(tmp_path)

    row = row_of(manifest, "scratch/deep.png")
    assert_accepted(row, "16bit_scaled")
    array = load_image(image_file)
    assert array.shape == (SIZE[1], SIZE[0], 3) and array.dtype == np.uint8
    assert array[:, 0].max() == 0 and array[:, -1].min() == 255  # 0 -> 0, 65535 -> 255
    column_means = array[..., 0].mean(axis=0)
    assert column_means[SIZE[0] // 2] == pytest.approx(127.5, abs=20)  # the ramp is scaled, not clipped
    assert np.all(np.diff(column_means[::4]) > 0)
    assert_accounted(tmp_path, manifest, report, quarantine)


def test_palette_class_masks_in_mmseg_layout(tmp_path: Path) -> None:
    ann = tmp_path / "ann_dir" / "train"
    cases = {"dom_a": (1, 2), "dom_b": (2, 1), "bad_index": (5, 1)}  # (dominant index, minor index)
    for seed, (stem, (dominant, minor)) in enumerate(cases.items(), start=10):
        corpus.write_image(tmp_path / "img_dir" / "train" / f"{stem}.jpg", seed)
        indices = np.zeros((SIZE[1], SIZE[0]), dtype=np.uint8)
        indices[4:24, 4:24] = dominant
        indices[30:34, 30:34] = minor
        corpus.write_palette_mask(ann / f"{stem}.png", indices)
    corpus.write_image(tmp_path / "img_dir" / "val" / "val_a.jpg", 20)
    indices = np.zeros((SIZE[1], SIZE[0]), dtype=np.uint8)
    indices[10:20, 10:20] = 1
    corpus.write_palette_mask(tmp_path / "ann_dir" / "val" / "val_a.png", indices)

    manifest, report, quarantine = run_chain(tmp_path, classes=["a", "b"])

    assert report["layout"] == "mmseg" and report["mask_type"] == "class_index"
    dom_a = row_of(manifest, "img_dir/train/dom_a.jpg")
    dom_b = row_of(manifest, "img_dir/train/dom_b.jpg")
    assert_accepted(dom_a, "multi_class_mask")
    assert_accepted(dom_b, "multi_class_mask")
    assert (dom_a["label"], dom_b["label"]) == ("a", "b")
    assert dom_a["mask_mode"] == "P"
    assert row_of(manifest, "img_dir/val/val_a.jpg")["label"] == "a"
    loaded = load_mask(ann / "dom_b.png", mask_type="class_index", shape=(SIZE[1], SIZE[0]))
    assert set(np.unique(loaded)) == {0, 1, 2}  # indices, not palette colours
    assert (loaded == 2).sum() == 400 and (loaded == 1).sum() == 16

    bad = row_of(manifest, "img_dir/train/bad_index.jpg")
    assert_quarantined(bad, "unknown_class_index")
    assert "5" in bad["reason"]
    assert report["masks"]["unknown_class_index"] == 1
    assert_accounted(tmp_path, manifest, report, quarantine)


# --- pairing ---------------------------------------------------------------------------------


def test_missing_mask_defect_vs_good(tmp_path: Path) -> None:
    write_baseline(tmp_path)
    corpus.write_image(tmp_path / "scratch" / "bare.jpg", seed=5)
    corpus.write_image(tmp_path / "good" / "plain.jpg", seed=6)

    manifest, report, quarantine = run_chain(tmp_path)

    assert_quarantined(row_of(manifest, "scratch/bare.jpg"), "missing_mask")
    good = row_of(manifest, "good/plain.jpg")
    assert_accepted(good)
    assert good["label"] == "good" and pd.isna(good["mask_path"])
    mask = load_mask(None, mask_type="binary", shape=(good["height"], good["width"]))
    assert mask.shape == (SIZE[1], SIZE[0]) and not mask.any()
    assert_accounted(tmp_path, manifest, report, quarantine)


def test_orphan_mask_gets_its_own_row(tmp_path: Path) -> None:
    write_baseline(tmp_path)
    corpus.write_mask(tmp_path / "scratch" / "lonely_mask.png")

    manifest, report, quarantine = run_chain(tmp_path)

    row = row_of(manifest, "scratch/lonely_mask.png")
    assert pd.isna(row["image_path"]) and row["mask_path"] == "scratch/lonely_mask.png"
    assert_quarantined(row, "orphan_mask")
    assert "scratch/lonely_mask.png" in set(quarantine["file"])
    assert_accounted(tmp_path, manifest, report, quarantine)


def test_ambiguous_pairing_same_stem_jpg_and_jpeg(tmp_path: Path) -> None:
    write_baseline(tmp_path)
    corpus.write_image(tmp_path / "scratch" / "twin.jpg", seed=7)
    corpus.write_image(tmp_path / "scratch" / "twin.jpeg", seed=8)
    corpus.write_mask(tmp_path / "scratch" / "twin_mask.png")

    manifest, report, quarantine = run_chain(tmp_path)

    assert_quarantined(row_of(manifest, "scratch/twin.jpg"), "ambiguous_pairing")
    assert_quarantined(row_of(manifest, "scratch/twin.jpeg"), "ambiguous_pairing")
    # the mask of the unusable pair is still accounted for (as an orphan of an unusable image)
    assert_quarantined(row_of(manifest, "scratch/twin_mask.png"), "orphan_mask")
    assert_accounted(tmp_path, manifest, report, quarantine)


# --- duplicates and leakage -----------------------------------------------------------------


def test_duplicates_across_existing_splits(tmp_path: Path) -> None:
    seed = 100
    for split_name, count in (("train", 3), ("val", 2), ("test", 2)):
        for i in range(count):
            corpus.write_sample(tmp_path / split_name / "scratch", f"{split_name}_{i}", seed)
            seed += 1
    original = corpus.write_image(tmp_path / "train" / "scratch" / "orig.jpg", seed=200)
    corpus.write_mask(tmp_path / "train" / "scratch" / "orig_mask.png")
    corpus.copy_bytes(original, tmp_path / "val" / "scratch" / "copy.jpg")
    corpus.write_mask(tmp_path / "val" / "scratch" / "copy_mask.png")
    near = corpus.write_image(tmp_path / "train" / "scratch" / "near.jpg", seed=300, quality=95)
    corpus.write_mask(tmp_path / "train" / "scratch" / "near_mask.png")
    corpus.reencode_jpeg(near, tmp_path / "test" / "scratch" / "near_q75.jpg", quality=75)
    corpus.write_mask(tmp_path / "test" / "scratch" / "near_q75_mask.png")

    manifest, report, quarantine = run_chain(tmp_path)

    assert report["split"]["strategy"] == "keep_existing"
    accepted = manifest[manifest["status"] == "accepted"]
    assert (accepted["split"] == accepted["source_split"]).all()

    copy_row = row_of(manifest, "val/scratch/copy.jpg")
    assert_quarantined(copy_row, "exact_duplicate")
    assert copy_row["duplicate_of"] == "train/scratch/orig.jpg"
    assert_accepted(row_of(manifest, "train/scratch/orig.jpg"))
    leakage = report["duplicates"]["leakage"]
    exact_entries = [e for e in leakage if "val/scratch/copy.jpg" in e["images"]]
    assert len(exact_entries) == 1
    assert exact_entries[0]["splits"] == ["train", "val"]

    near_train = row_of(manifest, "train/scratch/near.jpg")
    near_test = row_of(manifest, "test/scratch/near_q75.jpg")
    assert near_train["content_hash"] != near_test["content_hash"]
    for row in (near_train, near_test):
        assert_accepted(row, "duplicate_group", "leakage")
    assert near_train["duplicate_group"] == near_test["duplicate_group"]
    near_entries = [e for e in leakage if set(e["images"]) == {"train/scratch/near.jpg", "test/scratch/near_q75.jpg"}]
    assert len(near_entries) == 1 and near_entries[0]["splits"] == ["test", "train"]
    # the unrelated samples are in no group
    others = manifest[manifest["image_path"].str.contains(r"/(?:train|val|test)_\d", regex=True)]
    assert others["duplicate_group"].isna().all()
    assert_accounted(tmp_path, manifest, report, quarantine)


# --- EXIF orientation -----------------------------------------------------------------------


UPRIGHT = (32, 48)  # (width, height) of the picture as displayed; the raw pixels are 48 x 32


@pytest.mark.parametrize("mask_grid", ["upright", "raw"])
def test_exif_rotated_image_and_mask_line_up(tmp_path: Path, mask_grid: str) -> None:
    write_baseline(tmp_path)
    image_file = corpus.write_exif_rotated_jpeg(tmp_path / "scratch" / "turned.jpg", seed=9, upright_size=UPRIGHT)
    mask_file = tmp_path / "scratch" / "turned_mask.png"
    if mask_grid == "upright":
        corpus.write_mask_upright(mask_file, UPRIGHT)
    else:
        corpus.write_mask_raw_grid(mask_file, UPRIGHT)

    with Image.open(image_file) as raw:
        assert raw.size == (UPRIGHT[1], UPRIGHT[0])  # fixture: raw grid is W x H swapped

    manifest, report, quarantine = run_chain(tmp_path)

    row = row_of(manifest, "scratch/turned.jpg")
    assert_accepted(row, "exif_rotated")
    assert (row["width"], row["height"]) == UPRIGHT
    assert row["exif_orientation"] == 6
    assert row["mask_transform"] == ("exif" if mask_grid == "raw" else "none")
    image = load_image(image_file)
    mask = load_mask(mask_file, mask_type="binary", shape=(int(row["height"]), int(row["width"])),
                     orientation=int(row["exif_orientation"]), mask_transform=str(row["mask_transform"]))
    assert image.shape == (UPRIGHT[1], UPRIGHT[0], 3)
    assert mask.shape == image.shape[:2]
    np.testing.assert_array_equal(mask, corpus.binary_mask_array(UPRIGHT) > 0)
    brightness = image.mean(axis=2)
    assert brightness[mask == 1].mean() > 230  # the white defect is under the mask...
    assert brightness[mask == 0].mean() < 140  # ...and nowhere else
    assert_accounted(tmp_path, manifest, report, quarantine)


# --- split -----------------------------------------------------------------------------------


def test_single_sample_class_stays_in_train_with_warning(tmp_path: Path) -> None:
    write_baseline(tmp_path, n_defect=6, n_good=4)
    corpus.write_sample(tmp_path / "rare", "only_one", seed=11)

    manifest, report, quarantine = run_chain(tmp_path, split={"strategy": "stratified"})

    row = row_of(manifest, "rare/only_one.jpg")
    assert_accepted(row)
    assert row["label"] == "rare" and row["split"] == "train"
    warnings = report["split"]["warnings"]
    assert any("'rare'" in w for w in warnings), warnings
    assert report["warnings"] == warnings
    assert set(manifest.loc[manifest["label"] == "scratch", "split"]) == {"train", "val", "test"}
    assert_accounted(tmp_path, manifest, report, quarantine)


# --- unusable roots and junk ----------------------------------------------------------------


def test_empty_root_raises_naming_path_and_parameter(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    root.mkdir()
    with pytest.raises(RawDataError) as error:
        nodes.organize({"source": "user", "raw_root": str(root)}, make_params(root))
    assert str(root) in str(error.value) and "data.raw_root" in str(error.value)


def test_nonexistent_root_raises_naming_path_and_parameter(tmp_path: Path) -> None:
    root = tmp_path / "no_such_folder"
    with pytest.raises(RawDataError) as error:
        nodes.organize({"source": "user", "raw_root": str(root)}, make_params(root))
    assert str(root) in str(error.value) and "data.raw_root" in str(error.value)


def test_junk_files_are_quarantined_or_listed(tmp_path: Path) -> None:
    write_baseline(tmp_path)
    corpus.write_text_file(tmp_path / "scratch" / "notes.txt")
    corpus.write_text_file(tmp_path / "README.md", "# my dataset\n")
    corpus.write_image(tmp_path / ".cache" / "thumb.jpg", seed=21)  # a tool's hidden folder

    manifest, report, quarantine = run_chain(tmp_path)

    assert_quarantined(row_of(manifest, "scratch/notes.txt"), "unsupported_file_type")
    assert report["accounting"]["ignored_files"] == [".cache/", "README.md"]
    assert not ((manifest["image_path"] == "README.md") | (manifest["mask_path"] == "README.md")).any()
    assert "README.md" in render_data_report_markdown(report, quarantine)  # shown to the user, not lost
    assert_accounted(tmp_path, manifest, report, quarantine)


# --- label / mask consistency ---------------------------------------------------------------


@pytest.mark.parametrize("policy", ["quarantine", "keep"])
def test_inconsistent_label_and_mask(tmp_path: Path, policy: str) -> None:
    write_baseline(tmp_path)
    corpus.write_image(tmp_path / "scratch" / "blank.jpg", seed=12)
    corpus.write_mask(tmp_path / "scratch" / "blank_mask.png", empty=True)
    corpus.write_image(tmp_path / "good" / "marked.jpg", seed=13)
    corpus.write_mask(tmp_path / "good" / "marked_mask.png")

    manifest, report, quarantine = run_chain(tmp_path, masks={"inconsistent_label": policy})

    blank = row_of(manifest, "scratch/blank.jpg")
    marked = row_of(manifest, "good/marked.jpg")
    if policy == "quarantine":
        assert_quarantined(blank, "empty_mask")
        assert_quarantined(marked, "nonempty_good_mask")
    else:
        assert_accepted(blank, "empty_mask")
        assert_accepted(marked, "nonempty_good_mask")
    assert report["masks"]["empty_defect_masks"] == 1
    assert report["masks"]["nonempty_good_masks"] == 1
    assert_accounted(tmp_path, manifest, report, quarantine)


# --- execution paths and determinism --------------------------------------------------------


def write_mixed_corpus(root: Path) -> None:
    """At least 8 decodable samples plus a few broken files, for the pool-vs-in-process check."""
    write_baseline(root, n_defect=6, n_good=4)
    corpus.write_truncated_jpeg(root / "scratch" / "cut.jpg", seed=21)
    corpus.write_zero_byte(root / "good" / "zero.jpg")
    corpus.write_image(root / "scratch" / "lossy.jpg", seed=22)
    corpus.write_jpeg_noise_mask(root / "scratch" / "lossy_mask.jpg")
    corpus.write_rgba_png(root / "scratch" / "clear.png", seed=23)
    corpus.write_mask(root / "scratch" / "clear_mask.png")


def test_process_pool_matches_in_process(tmp_path: Path) -> None:
    write_mixed_corpus(tmp_path)

    serial, serial_report, _ = run_chain(tmp_path)
    pooled, pooled_report, pooled_quarantine = run_chain(tmp_path, check={"num_workers": 2, "chunksize": 1})

    assert (serial["status"] != "quarantined").sum() >= 8
    pd.testing.assert_frame_equal(pooled, serial)
    assert pooled_report["manifest_hash"] == serial_report["manifest_hash"]
    assert_accounted(tmp_path, pooled, pooled_report, pooled_quarantine)


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    seed = 400
    for label, count in (("scratch", 12), ("spot", 10), ("good", 10)):
        for i in range(count):
            corpus.write_sample(root / label, f"{label}_{i:02d}", seed, with_mask=label != "good",
                                size=(32, 32))
            seed += 1
    stratified = {"strategy": "stratified", "seed": 42}

    first, first_report, first_quarantine = run_chain(root, split=stratified)
    second, _, _ = run_chain(root, split=stratified)
    other, _, _ = run_chain(root, split={**stratified, "seed": 7})

    assert (first["status"] == "accepted").sum() >= 30
    assert first.equals(second)
    first.to_parquet(tmp_path / "a.parquet", index=False)
    second.to_parquet(tmp_path / "b.parquet", index=False)
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    assert not first["split"].equals(other["split"])
    assert first.drop(columns="split").equals(other.drop(columns="split"))
    assert_accounted(root, first, first_report, first_quarantine)
