"""Scanning a raw folder into manifest rows, for the three layouts users arrive with.

* ``class_folders``: ``<root>/[<split>/]<Class>/<stem>.<ext>`` with the mask beside its image,
  same stem (``img_001.jpg`` + ``img_001.png``) or with a suffix (``img_001_mask.png``);
  defect-free folders (a word of the name is a good label: ``good``, ``XY_Free``, ``OK-parts``)
  may have no masks; a prefix every class folder shares (``XY_``) is stripped from class names.
* ``images_masks``: ``<root>/images/**`` and ``<root>/masks/**`` mirrored by relative path and
  stem, labels from an optional CSV (``image,label``) or else from the mask.
* ``mmseg``: ``<root>/img_dir/<split>/`` and ``<root>/ann_dir/<split>/`` with class-index masks.

Every file in the layout's folders becomes part of exactly one row: an image (with or without
mask), an orphan mask, or an unusable file, so nothing is silently dropped. Rows not yet
decided carry ``status="pending"``; rows already known to be unusable are ``quarantined`` with a
reason. Paths are POSIX and relative to the root so the project can move.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from defect_pipeline.data.class_names import is_good_label, shared_class_prefix

SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                 "validation": "val", "test": "test", "testing": "test"}
LOSSLESS_MASK_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff")


class RawDataError(ValueError):
    """The raw root cannot be scanned at all (missing, empty, unknown layout)."""


@dataclass(frozen=True)
class ScanOptions:
    """What :func:`scan_raw_root` needs to know, taken from the ``data`` parameters."""

    layout: str = "auto"
    good_labels: tuple[str, ...] = ("good",)
    good_label: str = "good"
    mask_suffixes: tuple[str, ...] = ("_mask", "_label", "_gt", "")
    image_extensions: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
    labels_csv: str | None = None
    #: ``auto``: strip the prefix every class folder shares; None: keep names; else: strip this prefix
    class_prefix: str | None = "auto"
    #: ``data.classes`` as configured: ``auto`` keeps folder names that it lists verbatim
    classes: tuple[str, ...] | None = None


def _class_prefix(folder_names: list[str], opts: ScanOptions) -> str:
    if opts.class_prefix is None:
        return ""
    if opts.class_prefix != "auto":
        return opts.class_prefix
    if opts.classes and set(folder_names) & set(opts.classes):
        return ""  # data.classes names the folders as they are
    return shared_class_prefix(folder_names)


@dataclass
class ScanResult:
    """Rows of the organized manifest plus what the scan saw beyond them."""

    layout: str
    rows: list[dict]
    ignored_files: list[str] = field(default_factory=list)
    class_folders: list[str] = field(default_factory=list)
    class_prefix: str = ""  # stripped from every class folder's name
    good_folders: list[str] = field(default_factory=list)  # folders read as defect-free

    @property
    def files_scanned(self) -> int:
        """Number of files that belong to rows (image and mask files)."""
        return sum((r["image_path"] is not None) + (r["mask_path"] is not None) for r in self.rows)


def make_sample_id(relative_path: str) -> str:
    """A stable, filename-safe id derived from a sample's relative path."""
    return hashlib.sha1(relative_path.encode("utf-8")).hexdigest()[:16]


def _row(image: str | None, mask: str | None, *, label: str | None, label_source: str,
         source_split: str | None, status: str = "pending", reason: str = "") -> dict:
    key = image if image is not None else mask
    return {
        "sample_id": make_sample_id(key),
        "image_path": image,
        "mask_path": mask,
        "label": label,
        "label_source": label_source,
        "source_split": source_split,
        "status": status,
        "reason": reason,
    }


def _files_under(folder: Path, root: Path) -> list[str]:
    """All files below ``folder``, as sorted POSIX paths relative to ``root``."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames.sort()
        for name in filenames:
            found.append(PurePosixPath(Path(dirpath, name).relative_to(root).as_posix()).as_posix())
    return sorted(found)


def detect_layout(root: Path) -> str:
    """Guess the layout from the folder names directly under ``root``."""
    names = {p.name.lower() for p in root.iterdir() if p.is_dir()}
    if {"img_dir", "ann_dir"} <= names:
        return "mmseg"
    if {"images", "masks"} <= names:
        return "images_masks"
    if names:
        return "class_folders"
    raise RawDataError(
        f"raw root {root} has no sub-folders, so no layout can be recognised. Put images in "
        "class folders (<root>/<Class>/...), or images/ + masks/, or img_dir/ + ann_dir/, "
        "and set data.raw_root (and data.layout if needed)."
    )


def _split_stem(stem: str, suffixes: Iterable[str]) -> tuple[str, str] | None:
    """``(base_stem, suffix)`` when ``stem`` ends with a non-empty mask suffix."""
    for suffix in suffixes:
        if suffix and stem.lower().endswith(suffix.lower()) and len(stem) > len(suffix):
            return stem[: -len(suffix)], suffix
    return None


def _pair_in_folder(files: list[str], opts: ScanOptions) -> tuple[list[tuple[str, str | None]], list[tuple[str, str]], list[tuple[str, str]]]:
    """Pair images with masks among files of one folder.

    Returns ``(pairs, orphan_masks, unusable)`` where pairs are ``(image, mask_or_None)``,
    orphan masks are ``(mask, reason)`` and unusable files ``(file, reason)``.
    """
    by_stem: dict[str, list[str]] = defaultdict(list)
    unusable: list[tuple[str, str]] = []
    for path in files:
        p = PurePosixPath(path)
        if p.suffix.lower() in opts.image_extensions:
            by_stem[p.stem].append(path)
        else:
            unusable.append((path, f"unsupported_file_type: '{p.suffix or p.name}' is not an image extension"))

    masks_for: dict[str, str] = {}
    orphans: list[tuple[str, str]] = []
    images: list[str] = []
    suffixed = [s for s in opts.mask_suffixes if s]
    for stem in sorted(by_stem):
        split = _split_stem(stem, suffixed)
        if split is not None:
            base = split[0]
            candidates = by_stem[stem]
            if base in by_stem:
                lossless = [c for c in candidates if PurePosixPath(c).suffix.lower() in LOSSLESS_MASK_EXTENSIONS]
                chosen = sorted(lossless or candidates)[0]
                masks_for[base] = chosen
                for extra in candidates:
                    if extra != chosen:
                        orphans.append((extra, f"duplicate_mask: a second mask for '{base}' ({chosen} is used)"))
            else:
                for c in candidates:
                    orphans.append((c, "orphan_mask: mask without image (no file with stem "
                                       f"'{base}' beside it)"))
            continue
    for stem in sorted(by_stem):
        if _split_stem(stem, suffixed) is not None:
            continue
        candidates = sorted(by_stem[stem])
        if len(candidates) == 1:
            images.append(candidates[0])
            continue
        # same stem, several extensions: the lossless one is the mask (img_001.jpg + img_001.png)
        lossless = [c for c in candidates if PurePosixPath(c).suffix.lower() in LOSSLESS_MASK_EXTENSIONS]
        lossy = [c for c in candidates if c not in lossless]
        if "" in opts.mask_suffixes and len(lossy) == 1 and len(lossless) == 1 and stem not in masks_for:
            images.append(lossy[0])
            masks_for[stem] = lossless[0]
        else:
            for c in candidates:
                unusable.append((c, f"ambiguous_pairing: {len(candidates)} files share the stem "
                                    f"'{stem}' ({', '.join(PurePosixPath(x).name for x in candidates)}); "
                                    "rename them or use a mask suffix such as _mask"))
    pairs = [(img, masks_for.get(PurePosixPath(img).stem)) for img in images]
    used_stems = {PurePosixPath(img).stem for img in images}
    for base, mask in masks_for.items():
        if base not in used_stems:
            orphans.append((mask, f"orphan_mask: its image '{base}' is unusable"))
    return pairs, orphans, unusable


def _scan_class_folders(root: Path, opts: ScanOptions) -> ScanResult:
    top_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    split_first = bool(top_dirs) and all(p.name.lower() in SPLIT_ALIASES for p in top_dirs)
    class_dirs: list[tuple[str | None, Path]] = []
    if split_first:
        for split_dir in top_dirs:
            for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
                class_dirs.append((SPLIT_ALIASES[split_dir.name.lower()], class_dir))
    else:
        class_dirs = [(None, p) for p in top_dirs]
    rows: list[dict] = []
    prefix = _class_prefix([d.name for _, d in class_dirs], opts)
    names = {d.name: d.name[len(prefix):] if prefix and d.name.startswith(prefix) else d.name for _, d in class_dirs}
    good = {name for name, stripped in names.items() if is_good_label(stripped, opts.good_labels)}
    for split, class_dir in class_dirs:
        label = opts.good_label if class_dir.name in good else names[class_dir.name]
        files_by_folder: dict[str, list[str]] = defaultdict(list)
        for path in _files_under(class_dir, root):
            files_by_folder[str(PurePosixPath(path).parent)].append(path)
        for folder in sorted(files_by_folder):
            pairs, orphans, unusable = _pair_in_folder(files_by_folder[folder], opts)
            for image, mask in pairs:
                rows.append(_row(image, mask, label=label, label_source="folder", source_split=split))
            for mask, reason in orphans:
                rows.append(_row(None, mask, label=label, label_source="folder", source_split=split,
                                 status="quarantined", reason=reason))
            for path, reason in unusable:
                rows.append(_row(path, None, label=label, label_source="folder", source_split=split,
                                 status="quarantined", reason=reason))
    # hidden folders (.cache, .git) and loose non-image files are listed, never silently skipped
    ignored = [p.name + "/" for p in sorted(root.iterdir()) if p.is_dir() and p.name.startswith(".")]
    loose_rows = []
    loose_dirs = [root] + (top_dirs if split_first else [])
    for folder in loose_dirs:
        for path in sorted(p for p in folder.iterdir() if p.is_file()):
            rel = path.relative_to(root).as_posix()
            if path.suffix.lower() in opts.image_extensions:
                loose_rows.append(_row(rel, None, label=None, label_source="none", source_split=None,
                                       status="quarantined",
                                       reason="outside_class_folder: image is not inside a class folder"))
            else:
                ignored.append(rel)
    labels = sorted({names[d.name] for _, d in class_dirs if d.name not in good})
    return ScanResult("class_folders", rows + loose_rows, ignored, labels, class_prefix=prefix,
                      good_folders=sorted(good))


def _read_labels_csv(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise RawDataError(f"labels CSV {path} does not exist; fix data.labels_csv or set it to null")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        fields = {f.lower(): f for f in reader.fieldnames or []}
        image_col = fields.get("image") or fields.get("filename") or fields.get("image_path")
        label_col = fields.get("label") or fields.get("class")
        if image_col is None or label_col is None:
            raise RawDataError(f"labels CSV {path} needs columns 'image' and 'label' (found {reader.fieldnames})")
        return {PurePosixPath(r[image_col].strip()).as_posix(): r[label_col].strip() for r in reader}


def _pair_mirrored(root: Path, image_dir: str, mask_dir: str, opts: ScanOptions,
                   split_of, label_of) -> list[dict]:
    """Pair ``image_dir/<rel>/<stem>.*`` with ``mask_dir/<rel>/<stem>[suffix].*``."""
    rows: list[dict] = []
    images: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in _files_under(root / image_dir, root):
        p = PurePosixPath(path)
        if p.suffix.lower() not in opts.image_extensions:
            rows.append(_row(path, None, label=None, label_source="none", source_split=split_of(path),
                             status="quarantined",
                             reason=f"unsupported_file_type: '{p.suffix or p.name}' is not an image extension"))
            continue
        rel_parent = str(p.parent.relative_to(image_dir))
        images[(rel_parent, p.stem)].append(path)
    masks: dict[tuple[str, str], list[str]] = defaultdict(list)
    suffixed = [s for s in opts.mask_suffixes if s]
    mask_rows: list[dict] = []
    for path in _files_under(root / mask_dir, root):
        p = PurePosixPath(path)
        if p.suffix.lower() not in opts.image_extensions:
            mask_rows.append(_row(None, path, label=None, label_source="none", source_split=split_of(path),
                                  status="quarantined",
                                  reason=f"unsupported_file_type: '{p.suffix or p.name}' is not an image extension"))
            continue
        rel_parent = str(p.parent.relative_to(mask_dir))
        stem = p.stem
        split = _split_stem(stem, suffixed)
        if split is not None and (rel_parent, split[0]) in images:
            stem = split[0]
        masks[(rel_parent, stem)].append(path)
    for key in sorted(images):
        candidates = sorted(images[key])
        if len(candidates) > 1:
            for c in candidates:
                rows.append(_row(c, None, label=None, label_source="none", source_split=split_of(c),
                                 status="quarantined",
                                 reason=f"ambiguous_pairing: {len(candidates)} images share the stem '{key[1]}'"))
            continue
        image = candidates[0]
        mask_candidates = sorted(masks.pop(key, []))
        mask = mask_candidates[0] if mask_candidates else None
        for extra in mask_candidates[1:]:
            mask_rows.append(_row(None, extra, label=None, label_source="none", source_split=split_of(extra),
                                  status="quarantined",
                                  reason=f"duplicate_mask: a second mask for '{image}' ({mask} is used)"))
        label, source = label_of(image)
        rows.append(_row(image, mask, label=label, label_source=source, source_split=split_of(image)))
    for key in sorted(masks):
        for mask in sorted(masks[key]):
            mask_rows.append(_row(None, mask, label=None, label_source="none", source_split=split_of(mask),
                                  status="quarantined",
                                  reason="orphan_mask: mask without image (no image with the same "
                                         f"relative path and stem '{key[1]}' under {image_dir}/)"))
    return rows + mask_rows


def _loose_files(root: Path, known_dirs: set[str]) -> list[str]:
    ignored = [p.name for p in sorted(root.iterdir()) if p.is_file()]
    ignored += [p.name + "/" for p in sorted(root.iterdir()) if p.is_dir() and p.name.lower() not in known_dirs]
    return ignored


def _scan_images_masks(root: Path, opts: ScanOptions) -> ScanResult:
    dirs = {p.name.lower(): p.name for p in root.iterdir() if p.is_dir()}
    labels = _read_labels_csv(root / opts.labels_csv) if opts.labels_csv else {}
    image_dir = dirs["images"]

    def label_of(image: str) -> tuple[str | None, str]:
        rel = PurePosixPath(image).relative_to(image_dir).as_posix()
        for key in (rel, PurePosixPath(rel).name, image):
            if key in labels:
                value = labels[key]
                return (opts.good_label if is_good_label(value, opts.good_labels) else value), "csv"
        return None, "mask"

    def split_of(path: str) -> str | None:
        parts = PurePosixPath(path).parts
        return SPLIT_ALIASES.get(parts[1].lower()) if len(parts) > 2 else None

    rows = _pair_mirrored(root, image_dir, dirs["masks"], opts, split_of, label_of)
    ignored = [f for f in _loose_files(root, {"images", "masks"}) if f != opts.labels_csv]
    classes = sorted({v for v in labels.values() if not is_good_label(v, opts.good_labels)})
    return ScanResult("images_masks", rows, ignored, classes)


def _scan_mmseg(root: Path, opts: ScanOptions) -> ScanResult:
    dirs = {p.name.lower(): p.name for p in root.iterdir() if p.is_dir()}

    def split_of(path: str) -> str | None:
        parts = PurePosixPath(path).parts
        return SPLIT_ALIASES.get(parts[1].lower()) if len(parts) > 2 else None

    rows = _pair_mirrored(root, dirs["img_dir"], dirs["ann_dir"], opts, split_of,
                          lambda image: (None, "mask"))
    return ScanResult("mmseg", rows, _loose_files(root, {"img_dir", "ann_dir"}), [])


SCANNERS = {
    "class_folders": _scan_class_folders,
    "images_masks": _scan_images_masks,
    "mmseg": _scan_mmseg,
}


def scan_raw_root(root: str | os.PathLike, opts: ScanOptions) -> ScanResult:
    """Scan ``root`` in the configured (or detected) layout and return manifest rows.

    Raises:
        RawDataError: the root does not exist, is not a folder, holds no files, or does not
            match the requested layout. The message names the path and ``data.raw_root``.
    """
    root = Path(root)
    if not root.exists():
        raise RawDataError(
            f"raw root '{root}' does not exist. Set data.raw_root in conf/<env>/parameters_data.yml "
            "(or pass --params data.raw_root=/path/to/images) to the folder with your images, or "
            "set it to null to use the built-in demo data."
        )
    if not root.is_dir():
        raise RawDataError(f"raw root '{root}' is a file, not a folder; point data.raw_root at the folder.")
    if not any(root.iterdir()):
        raise RawDataError(
            f"raw root '{root}' is empty: no images to organize. Copy your images there or point "
            "data.raw_root at the folder that holds them."
        )
    layout = detect_layout(root) if opts.layout == "auto" else opts.layout
    if layout == "mmseg" and not {"img_dir", "ann_dir"} <= {p.name.lower() for p in root.iterdir()}:
        raise RawDataError(f"data.layout is 'mmseg' but '{root}' has no img_dir/ and ann_dir/ folders")
    if layout == "images_masks" and not {"images", "masks"} <= {p.name.lower() for p in root.iterdir()}:
        raise RawDataError(f"data.layout is 'images_masks' but '{root}' has no images/ and masks/ folders")
    result = SCANNERS[layout](root, opts)
    if not result.rows:
        raise RawDataError(
            f"raw root '{root}' ({layout} layout) contains no image files with extensions "
            f"{', '.join(opts.image_extensions)}; check data.raw_root and data.image_extensions."
        )
    result.rows.sort(key=lambda r: (r["image_path"] or r["mask_path"]))
    return result
