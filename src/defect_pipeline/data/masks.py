"""Mask validation: class indices, lossy binary masks, label/mask consistency, tiny defects.

Works on the measured columns :mod:`defect_pipeline.data.quality` added (no decoding here).
Binary masks with values outside {0, 255} (JPEG artefacts) are counted and flagged; they are
binarized at load time with the same threshold. Class-index masks are checked against the
declared classes; labels that come from masks are resolved to the dominant defect class.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from defect_pipeline.data.quality import add_flag

BINARY_DEFECT_LABEL = "defect"


class MaskConfigError(ValueError):
    """The masks cannot be interpreted with the given parameters (e.g. no class list)."""


def resolve_mask_type(mask_type: str, layout: str) -> str:
    """``auto`` means class-index masks for the mmseg layout and binary masks otherwise."""
    if mask_type != "auto":
        return mask_type
    return "class_index" if layout == "mmseg" else "binary"


def _class_pixels(value: object) -> dict[int, int]:
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return {}
    return {int(k): int(v) for k, v in json.loads(str(value)).items()}


def validate_masks(manifest: pd.DataFrame, *, mask_type: str, classes: list[str] | None, good_label: str,
                   min_defect_pixels: int, inconsistent_label: str) -> pd.DataFrame:
    """Apply the mask rules to still-pending rows and resolve labels that come from masks.

    Args:
        manifest: output of the file checks (with ``mask_area``, ``mask_class_pixels``, ...).
        mask_type: ``"binary"`` or ``"class_index"``.
        classes: defect class names (index ``i + 1`` is ``classes[i]``); required for
            class-index masks.
        good_label: label of defect-free images.
        min_defect_pixels: non-empty masks smaller than this are flagged ``tiny_mask``.
        inconsistent_label: ``"quarantine"`` or ``"keep"`` (flag only) for a defect label with
            an empty mask, or a defect-free label with a non-empty mask.

    Raises:
        MaskConfigError: class-index masks without ``classes``.
    """
    df = manifest.copy()
    pending = df["status"] == "pending"
    has_mask = df["mask_path"].notna() & pending
    if "flags" not in df:
        df["flags"] = ""
    df["mask_type"] = mask_type

    if mask_type == "class_index":
        if not classes:
            highest = int(df.loc[has_mask, "mask_max_value"].max()) if has_mask.any() else 0
            raise MaskConfigError(
                f"masks are class-index masks (highest index seen: {highest}) but data.classes is not "
                "set. List the defect class names in conf/<env>/parameters_data.yml, in index order "
                "(index 1 = first name), e.g. data.classes: [inclusion, patches, scratches]."
            )
        n_classes = len(classes)
        labels, unknown, multi = [], [], []
        for i in df.index[has_mask]:
            pixels = _class_pixels(df.at[i, "mask_class_pixels"])
            bad = sorted(k for k in pixels if k > n_classes)
            if bad:
                unknown.append((i, bad))
                continue
            if len(pixels) > 1:
                multi.append(i)
            if df.at[i, "label_source"] == "mask":
                dominant = max(pixels.items(), key=lambda kv: (kv[1], -kv[0]))[0] if pixels else None
                labels.append((i, classes[dominant - 1] if dominant else good_label))
        for i, bad in unknown:
            df.at[i, "status"] = "quarantined"
            df.at[i, "reason"] = (f"unknown_class_index: mask contains index {', '.join(map(str, bad))} but "
                                  f"data.classes declares {n_classes} classes (indices 1..{n_classes})")
        for i, label in labels:
            df.at[i, "label"] = label
        add_flag(df, df.index.isin(multi), "multi_class_mask")
    else:
        noisy = has_mask & (df["mask_noisy_pixels"].fillna(0) > 0)
        add_flag(df, noisy, "mask_binarized")
        from_mask = has_mask & (df["label_source"] == "mask")
        df.loc[from_mask, "label"] = np.where(df.loc[from_mask, "mask_area"] > 0, BINARY_DEFECT_LABEL, good_label)

    pending = df["status"] == "pending"
    area = df["mask_area"].fillna(0)
    empty_defect = pending & (df["label"] != good_label) & df["label"].notna() & (area == 0)
    filled_good = pending & (df["label"] == good_label) & (area > 0)
    if inconsistent_label == "quarantine":
        df.loc[empty_defect, "status"] = "quarantined"
        df.loc[empty_defect, "reason"] = ("empty_mask: label '" + df.loc[empty_defect, "label"]
                                          + "' is a defect class but its mask has no defect pixels")
        df.loc[filled_good, "status"] = "quarantined"
        df.loc[filled_good, "reason"] = ("nonempty_good_mask: labelled defect-free ('" + good_label
                                         + "') but the mask marks " + area[filled_good].astype(str)
                                         + " defect pixels")
    else:
        add_flag(df, empty_defect, "empty_mask")
        add_flag(df, filled_good, "nonempty_good_mask")
    pending = df["status"] == "pending"
    tiny = pending & (area > 0) & (area < min_defect_pixels)
    add_flag(df, tiny, "tiny_mask")
    df.loc[df["status"] == "pending", "status"] = "accepted"
    return df
