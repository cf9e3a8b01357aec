"""The manifest table: column order, canonical form and content hash.

The manifest is the contract between the data pipeline and everything after it: one row per
sample (or per unusable file), paths relative to the raw root, a ``status`` of ``accepted`` or
``quarantined`` with a ``reason``, and the split. :func:`finalize_manifest` puts it in one
canonical order so the same inputs and seed give a byte-identical Parquet file, and
:func:`manifest_hash` fingerprints it for checkpoints and MLflow tags.
"""

from __future__ import annotations

import hashlib

import pandas as pd

MANIFEST_COLUMNS: list[str] = [
    "sample_id", "image_path", "mask_path", "label", "split", "status", "reason", "flags",
    "width", "height", "mode", "channels", "file_size", "content_hash", "phash",
    "exif_orientation", "mask_type", "mask_mode", "mask_transform", "mask_area",
    "mask_components", "mask_class_pixels", "mask_noisy_pixels", "label_source",
    "source_split", "duplicate_group", "duplicate_of",
]


def finalize_manifest(df: pd.DataFrame) -> pd.DataFrame:
    """Canonical column order and row order (by file path), fresh index."""
    out = df.copy()
    for column in MANIFEST_COLUMNS:
        if column not in out:
            out[column] = pd.NA
    key = out["image_path"].fillna(out["mask_path"])
    out = out.assign(_key=key).sort_values("_key", kind="mergesort").drop(columns="_key")
    out = out[MANIFEST_COLUMNS].reset_index(drop=True)
    for column in ("label", "split", "status", "reason", "flags", "image_path", "mask_path",
                   "sample_id", "mode", "mask_type", "label_source", "source_split"):
        out[column] = out[column].astype("string")
    out["flags"] = out["flags"].fillna("")
    out["reason"] = out["reason"].fillna("")
    return out


def manifest_hash(df: pd.DataFrame) -> str:
    """SHA-256 of the manifest's content (independent of the file format it is stored in)."""
    canonical = df.to_csv(index=False, lineterminator="\n").encode("utf-8")
    return hashlib.sha256(canonical).hexdigest()
