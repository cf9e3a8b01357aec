"""File-level data checks: decode everything in a process pool, then apply the rules.

:func:`inspect_manifest` fills the manifest's measured columns (sizes, mode, hashes, mask
statistics) with one full decode per file, streaming results so memory does not grow with
image count. :func:`apply_file_checks` quarantines what cannot be used (corrupt, empty, not an
image, too small, image/mask size mismatch, missing mask for a defect label), and
:func:`mark_duplicates` groups exact duplicates (content hash) and near-duplicates (perceptual
hash) so the split can keep each group together and the report can flag cross-split leakage.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections import defaultdict
from collections.abc import Iterator

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from defect_pipeline.data.imageio import InspectTask, inspect_sample

logger = logging.getLogger(__name__)

FACT_COLUMNS: dict[str, object] = {
    "width": "Int64", "height": "Int64", "mode": "string", "channels": "Int64",
    "file_size": "Int64", "content_hash": "string", "phash": "string", "exif_orientation": "Int64",
    "image_notes": "string", "image_error": "string",
    "mask_mode": "string", "mask_width": "Int64", "mask_height": "Int64", "mask_transform": "string",
    "mask_max_value": "Int64", "mask_noisy_pixels": "Int64", "mask_area": "Int64",
    "mask_components": "Int64", "mask_class_pixels": "string", "mask_error": "string",
}
SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}


def _run_tasks(tasks: list[InspectTask], num_workers: int, chunksize: int, progress: bool) -> Iterator[dict]:
    bar = tqdm(total=len(tasks), desc="check: decoding", unit="img", disable=not progress, mininterval=1.0)
    if num_workers == 0 or len(tasks) < 2 * chunksize:
        for task in tasks:
            yield inspect_sample(task)
            bar.update()
    else:
        # spawn: the pool must not inherit the parent's threads or open handles (MLflow, torch)
        context = multiprocessing.get_context("spawn")
        with context.Pool(processes=num_workers) as pool:
            for facts in pool.imap(inspect_sample, tasks, chunksize=chunksize):
                yield facts
                bar.update()
    bar.close()


def inspect_manifest(manifest: pd.DataFrame, root: str, *, mask_type: str, binarize_threshold: int,
                     num_workers: int | None = None, chunksize: int = 16, progress: bool = True) -> pd.DataFrame:
    """Decode every pending sample's image and mask and add the measured columns.

    Args:
        manifest: rows from the ``organize`` step (``status == "pending"`` rows are decoded).
        root: the raw root the manifest's paths are relative to.
        mask_type: ``"binary"`` or ``"class_index"``.
        binarize_threshold: grey level above which a binary-mask pixel is foreground.
        num_workers: decoding processes (``None`` = one per CPU core, ``0`` = in-process).
        chunksize: samples per task sent to a worker.
        progress: show a progress bar.
    """
    workers = (os.cpu_count() or 1) if num_workers is None else num_workers
    pending = manifest.index[manifest["status"] == "pending"]
    def path_or_none(value: object) -> str | None:
        return None if pd.isna(value) else str(value)

    tasks = [InspectTask(root, path_or_none(manifest.at[i, "image_path"]),
                         path_or_none(manifest.at[i, "mask_path"]), mask_type, binarize_threshold)
             for i in pending]
    columns: dict[str, list] = {name: [None] * len(manifest) for name in FACT_COLUMNS}
    positions = {index: position for position, index in enumerate(manifest.index)}
    for index, facts in zip(pending, _run_tasks(tasks, workers, chunksize, progress)):
        for name, value in facts.items():
            columns[name][positions[index]] = value
    out = manifest.copy()
    for name, dtype in FACT_COLUMNS.items():
        out[name] = pd.Series(columns[name], index=manifest.index, dtype=dtype)
    return out


def _quarantine(df: pd.DataFrame, mask: pd.Series, reasons: pd.Series | str) -> None:
    """Quarantine still-pending rows selected by ``mask`` with ``reasons`` (first reason wins)."""
    target = mask & (df["status"] == "pending")
    df.loc[target, "status"] = "quarantined"
    df.loc[target, "reason"] = reasons if isinstance(reasons, str) else reasons[target]


def add_flag(df: pd.DataFrame, mask: pd.Series, flag: str) -> None:
    """Append ``flag`` to the ``flags`` column (``;``-separated) of the selected rows."""
    if "flags" not in df:
        df["flags"] = ""
    current = df.loc[mask, "flags"].fillna("")
    df.loc[mask, "flags"] = np.where(current == "", flag, current + ";" + flag)


def apply_file_checks(manifest: pd.DataFrame, *, good_label: str, min_image_size: int) -> pd.DataFrame:
    """Quarantine samples whose files cannot be used, each with a reason a person can act on."""
    df = manifest.copy()
    if "flags" not in df:
        df["flags"] = ""
    _quarantine(df, df["image_error"].notna(), "image_" + df["image_error"].fillna(""))
    _quarantine(df, df["mask_error"].notna(), "mask_" + df["mask_error"].fillna(""))
    too_small = (df["width"] < min_image_size) | (df["height"] < min_image_size)
    _quarantine(df, too_small.fillna(False),
                "too_small: image is " + df["width"].astype("string") + "x" + df["height"].astype("string")
                + f" px, below data.check.min_image_size={min_image_size}")
    has_mask = df["mask_path"].notna()
    mismatch = has_mask & ((df["mask_width"] != df["width"]) | (df["mask_height"] != df["height"])).fillna(False)
    _quarantine(df, mismatch,
                "size_mismatch: mask is " + df["mask_width"].astype("string") + "x" + df["mask_height"].astype("string")
                + ", image is " + df["width"].astype("string") + "x" + df["height"].astype("string")
                + " (after EXIF orientation)")
    no_mask = ~has_mask & df["image_path"].notna()
    unlabeled = no_mask & df["label"].isna()
    _quarantine(df, unlabeled, "missing_mask: no mask and no label; add a mask, or a label in "
                               "data.labels_csv for defect-free images")
    defect_without_mask = no_mask & df["label"].notna() & (df["label"] != good_label)
    _quarantine(df, defect_without_mask,
                "missing_mask: label '" + df["label"].fillna("") + "' is a defect class but the image has "
                "no mask (only defect-free images may come without one)")
    for note in ("alpha_dropped", "16bit_scaled", "palette_converted", "cmyk_converted", "exif_rotated"):
        add_flag(df, df["image_notes"].fillna("").str.contains(note, regex=False), note)
    return df


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def near_duplicate_pairs(hashes: list[int], max_distance: int) -> list[tuple[int, int, int]]:
    """Pairs ``(i, j, distance)`` of 64-bit hashes within ``max_distance`` bits.

    Uses multi-index hashing: split each hash into ``max_distance + 1`` bit bands; two hashes
    within the distance agree exactly on at least one band (pigeonhole), so only bucket mates
    are compared. Near-linear for real data instead of quadratic.
    """
    if max_distance < 0 or len(hashes) < 2:
        return []
    bands = max_distance + 1
    edges = [int(e) for e in np.linspace(0, 64, bands + 1)]
    seen: set[tuple[int, int]] = set()
    pairs = []
    for b in range(bands):
        lo, hi = edges[b], edges[b + 1]
        mask = (1 << (hi - lo)) - 1
        buckets: dict[int, list[int]] = defaultdict(list)
        for i, h in enumerate(hashes):
            buckets[(h >> lo) & mask].append(i)
        for members in buckets.values():
            for a_pos, a in enumerate(members):
                for bb in members[a_pos + 1:]:
                    if (a, bb) in seen:
                        continue
                    distance = (hashes[a] ^ hashes[bb]).bit_count()
                    if distance <= max_distance:
                        seen.add((a, bb))
                        pairs.append((a, bb, distance))
    return sorted(pairs)


def mark_duplicates(manifest: pd.DataFrame, *, exact_policy: str, near_max_distance: int) -> pd.DataFrame:
    """Group exact and near duplicates among usable samples.

    Adds ``duplicate_group`` (the sample_id of the group's first member, empty for singletons)
    and ``duplicate_of``. Exact copies after the first are quarantined when ``exact_policy`` is
    ``"quarantine"``. Members are ordered by source split (train, val, test) then path, so the
    copy kept is the training one.
    """
    df = manifest.copy()
    df["duplicate_group"] = pd.Series(pd.NA, index=df.index, dtype="string")
    df["duplicate_of"] = pd.Series(pd.NA, index=df.index, dtype="string")
    usable = df[(df["status"] == "pending") & df["content_hash"].notna()].copy()
    if usable.empty:
        return df
    usable["_order"] = usable["source_split"].map(SPLIT_ORDER).fillna(3)
    usable = usable.sort_values(["_order", "image_path"])
    index = list(usable.index)
    uf = _UnionFind(len(index))
    first_by_hash: dict[str, int] = {}
    exact_copies: list[tuple[int, int]] = []
    for pos, h in enumerate(usable["content_hash"]):
        if h in first_by_hash:
            uf.union(first_by_hash[h], pos)
            exact_copies.append((pos, first_by_hash[h]))
        else:
            first_by_hash[h] = pos
    hashes = [int(h, 16) for h in usable["phash"].fillna("0")]
    for a, b, _ in near_duplicate_pairs(hashes, near_max_distance):
        uf.union(a, b)
    groups: dict[int, list[int]] = defaultdict(list)
    for pos in range(len(index)):
        groups[uf.find(pos)].append(pos)
    for root, members in groups.items():
        if len(members) < 2:
            continue
        group_id = usable.at[index[root], "sample_id"]
        df.loc[[index[m] for m in members], "duplicate_group"] = group_id
    exact_positions = {pos for pos, _ in exact_copies}
    for pos, first in exact_copies:
        df.at[index[pos], "duplicate_of"] = usable.at[index[first], "image_path"]
    near = df.index.isin([index[m] for ms in groups.values() if len(ms) > 1 for m in ms
                          if m not in exact_positions])
    add_flag(df, pd.Series(near, index=df.index) & df["duplicate_group"].notna(), "duplicate_group")
    copies = df.index.isin([index[pos] for pos in exact_positions])
    copies_mask = pd.Series(copies, index=df.index)
    if exact_policy == "quarantine":
        _quarantine(df, copies_mask, "exact_duplicate: identical bytes to " + df["duplicate_of"].fillna(""))
    else:
        add_flag(df, copies_mask, "exact_duplicate")
    return df
