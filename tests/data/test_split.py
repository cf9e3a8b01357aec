"""Split assignment: targets, determinism, duplicate groups kept together, leakage flagged."""

from __future__ import annotations

import pandas as pd
import pytest

from defect_pipeline.data.split import _targets, assign_splits, stratified_split


@pytest.mark.parametrize(
    ("n", "val", "test", "expected"),
    [(100, 0.15, 0.15, (15, 15)), (3, 0.15, 0.15, (1, 1)), (2, 0.15, 0.15, (0, 0)),
     (10, 0.0, 0.2, (0, 2)), (4, 0.3, 0.3, (1, 1))],
)
def test_targets_leave_training_data(n: int, val: float, test: float, expected: tuple[int, int]) -> None:
    assert _targets(n, val, test) == expected
    assert sum(_targets(n, val, test)) < max(n, 1)


def _frame(n_per_label: dict[str, int]) -> pd.DataFrame:
    rows = [{"sample_id": f"{label}{i:03d}", "label": label} for label, n in n_per_label.items() for i in range(n)]
    return pd.DataFrame(rows)


def test_stratified_split_hits_the_fractions_per_label_and_is_seeded() -> None:
    df = _frame({"a": 40, "b": 20, "good": 60})
    split, warnings = stratified_split(df["label"], df["sample_id"], seed=1, val_fraction=0.25, test_fraction=0.25)
    counts = pd.crosstab(df["label"], split)
    assert counts.loc["a"].to_dict() == {"test": 10, "train": 20, "val": 10}
    assert counts.loc["good"].to_dict() == {"test": 15, "train": 30, "val": 15}
    assert not warnings
    again, _ = stratified_split(df["label"], df["sample_id"], seed=1, val_fraction=0.25, test_fraction=0.25)
    other, _ = stratified_split(df["label"], df["sample_id"], seed=2, val_fraction=0.25, test_fraction=0.25)
    assert split.equals(again) and not split.equals(other)


def test_groups_never_straddle_splits() -> None:
    df = _frame({"a": 30})
    groups = df["sample_id"].copy()
    groups.iloc[:6] = "dup-group"  # six near-identical images
    for seed in range(10):
        split, _ = stratified_split(df["label"], groups, seed=seed, val_fraction=0.2, test_fraction=0.2)
        assert split.iloc[:6].nunique() == 1


def _manifest(rows: list[dict]) -> pd.DataFrame:
    base = {"status": "accepted", "duplicate_group": None, "duplicate_of": None, "flags": "", "source_split": None}
    return pd.DataFrame([{**base, **r} for r in rows])


def test_keep_existing_flags_leakage_between_given_splits() -> None:
    df = _manifest([
        {"sample_id": "1", "image_path": "train/a.jpg", "label": "x", "source_split": "train", "duplicate_group": "1"},
        {"sample_id": "2", "image_path": "test/b.jpg", "label": "x", "source_split": "test", "duplicate_group": "1"},
        {"sample_id": "3", "image_path": "val/c.jpg", "label": "x", "source_split": "val"},
    ])
    outcome = assign_splits(df, strategy="auto", seed=0, val_fraction=0.2, test_fraction=0.2)
    assert outcome.strategy == "keep_existing"
    assert outcome.manifest["split"].tolist() == ["train", "test", "val"]
    assert outcome.leakage_groups[0]["splits"] == ["test", "train"]
    assert "leakage" in outcome.manifest.loc[0, "flags"]


def test_keep_existing_without_split_folders_is_a_clear_error() -> None:
    df = _manifest([{"sample_id": "1", "image_path": "a.jpg", "label": "x"}])
    with pytest.raises(ValueError, match="stratified"):
        assign_splits(df, strategy="keep_existing", seed=0, val_fraction=0.2, test_fraction=0.2)


def test_quarantined_rows_get_no_split() -> None:
    df = _manifest([{"sample_id": str(i), "image_path": f"{i}.jpg", "label": "x"} for i in range(10)])
    df.loc[0, "status"] = "quarantined"
    outcome = assign_splits(df, strategy="auto", seed=0, val_fraction=0.2, test_fraction=0.2)
    assert outcome.strategy == "stratified"
    assert pd.isna(outcome.manifest.loc[0, "split"])
    assert outcome.manifest.loc[1:, "split"].notna().all()
