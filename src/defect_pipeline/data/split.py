"""Deterministic train/val/test assignment that keeps duplicate groups together.

``keep_existing`` takes the split the raw layout already has (``img_dir/train``, ...);
``stratified`` draws a seeded, per-label split over *groups* (a sample, or a whole group of
exact/near duplicates), so a duplicate never lands on both sides of the train/test boundary.
``auto`` keeps an existing split when every accepted sample has one. Cross-split duplicate
groups that remain (only possible when keeping a given split) are flagged ``leakage``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from defect_pipeline.data.quality import add_flag

SPLITS = ("train", "val", "test")


@dataclass
class SplitOutcome:
    """The split manifest plus what the report should say about it."""

    manifest: pd.DataFrame
    strategy: str
    warnings: list[str] = field(default_factory=list)
    leakage_groups: list[dict] = field(default_factory=list)


def _targets(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """How many of ``n`` items go to val and test; at least one each when n allows."""
    n_val = int(math.floor(n * val_fraction + 0.5))
    n_test = int(math.floor(n * test_fraction + 0.5))
    if n >= 3:
        n_val = max(n_val, 1 if val_fraction > 0 else 0)
        n_test = max(n_test, 1 if test_fraction > 0 else 0)
    while n_val + n_test >= n and (n_val or n_test):
        if n_val >= n_test and n_val:
            n_val -= 1
        else:
            n_test -= 1
    return n_val, n_test


def stratified_split(labels: pd.Series, groups: pd.Series, *, seed: int, val_fraction: float,
                     test_fraction: float) -> tuple[pd.Series, list[str]]:
    """Assign each row to train/val/test, per label, whole groups at a time.

    Args:
        labels: label of each row.
        groups: group key of each row (rows with equal keys go to the same split).
        seed: RNG seed; the same inputs and seed always give the same assignment.
        val_fraction: target share of each label's samples in val.
        test_fraction: target share of each label's samples in test.

    Returns:
        The split of each row, and warnings (e.g. a class too small to appear in val/test).
    """
    rng = np.random.default_rng(seed)
    group_split: dict[object, str] = {}
    warnings = []
    frame = pd.DataFrame({"label": labels, "group": groups})
    # a group's stratum is the label of its first member (rows arrive sorted)
    group_label = frame.groupby("group", sort=True)["label"].first()
    group_size = frame.groupby("group", sort=True).size()
    for label in sorted(group_label.unique()):
        keys = np.array(sorted(group_label.index[group_label == label]))
        keys = keys[rng.permutation(len(keys))]
        n = int(group_size[keys].sum())
        n_val, n_test = _targets(n, val_fraction, test_fraction)
        if n < 3:
            warnings.append(f"class '{label}' has only {n} sample(s): all kept in train, none in val/test")
        assigned = {"test": 0, "val": 0}
        for key in keys:
            size = int(group_size[key])
            if assigned["test"] < n_test:
                target = "test"
            elif assigned["val"] < n_val:
                target = "val"
            else:
                target = "train"
            if target != "train":
                assigned[target] += size
            group_split[key] = target
    return frame["group"].map(group_split), warnings


def assign_splits(manifest: pd.DataFrame, *, strategy: str, seed: int, val_fraction: float,
                  test_fraction: float) -> SplitOutcome:
    """Fill the ``split`` column of accepted rows; quarantined rows get no split."""
    df = manifest.copy()
    accepted = df["status"] == "accepted"
    has_source = df.loc[accepted, "source_split"].notna()
    warnings: list[str] = []
    if strategy == "auto":
        strategy = "keep_existing" if accepted.any() and has_source.all() else "stratified"
    if strategy == "keep_existing" and not has_source.all():
        missing = df.loc[accepted & df["source_split"].isna(), "image_path"].head(3).tolist()
        raise ValueError(
            "data.split.strategy is 'keep_existing' but some accepted images are not in a "
            f"train/val/test folder (e.g. {missing}); use strategy 'stratified' or 'auto'"
        )
    df["split"] = pd.Series(pd.NA, index=df.index, dtype="string")
    if strategy == "keep_existing":
        df.loc[accepted, "split"] = df.loc[accepted, "source_split"]
        for name in SPLITS:
            if not (df["split"] == name).any():
                warnings.append(f"the existing split has no '{name}' samples")
    else:
        group = df["duplicate_group"].fillna(df["sample_id"])
        split, warnings = stratified_split(df.loc[accepted, "label"], group[accepted], seed=seed,
                                           val_fraction=val_fraction, test_fraction=test_fraction)
        df.loc[accepted, "split"] = split.astype("string")
    leakage = []
    grouped = df[accepted & df["duplicate_group"].notna()].groupby("duplicate_group", sort=True)
    for group_id, rows in grouped:
        if rows["split"].nunique() > 1:
            leakage.append({"group": group_id, "splits": sorted(rows["split"].unique().tolist()),
                            "images": rows["image_path"].tolist()})
            add_flag(df, df["duplicate_group"] == group_id, "leakage")
    # exact copies quarantined in another split are leakage that was prevented: report them too
    copies = df[(df["status"] == "quarantined") & df["duplicate_of"].notna()]
    with_image = df[df["image_path"].notna()]
    source_split = dict(zip(with_image["image_path"], with_image["source_split"]))
    for _, row in copies.iterrows():
        original_split = source_split.get(row["duplicate_of"])
        if row["source_split"] != original_split and pd.notna(row["source_split"]):
            leakage.append({"group": row["duplicate_group"], "splits": sorted({row["source_split"], original_split}),
                            "images": [row["duplicate_of"], row["image_path"]],
                            "resolved": "copy quarantined"})
    if leakage:
        warnings.append(f"{len(leakage)} duplicate group(s) straddle splits (leakage); see duplicates.leakage")
    return SplitOutcome(df, strategy, warnings, leakage)
