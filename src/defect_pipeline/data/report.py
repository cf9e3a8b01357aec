"""The data report: what was scanned, what was accepted, what was quarantined and why.

Everything here is derived from the final manifest (the single source of truth) plus the scan
and split summaries, so the report can never disagree with the data training will see.
:func:`build_data_report` returns the JSON-able report, :func:`render_data_report_markdown` the
human-readable version and :func:`quarantine_table` the list of every quarantined file.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from typing import Any

import numpy as np
import pandas as pd

from defect_pipeline.data.manifest import manifest_hash
from defect_pipeline.markdown import markdown_table


def _reason_code(reason: str) -> str:
    return reason.split(":", 1)[0].strip() if reason else ""


def _flag_counts(flags: pd.Series) -> dict[str, int]:
    counter: Counter[str] = Counter()
    for value in flags.fillna(""):
        counter.update(f for f in str(value).split(";") if f)
    return dict(sorted(counter.items()))


def _per_class_mask_stats(accepted: pd.DataFrame, classes: list[str], mask_type: str) -> dict[str, dict]:
    stats: dict[str, dict] = {}
    for label, rows in accepted.groupby("label", sort=True):
        area = rows["mask_area"].dropna().astype(float)
        comps = rows["mask_components"].dropna().astype(float)
        entry: dict[str, Any] = {"images": int(len(rows))}
        if len(area):
            entry.update(area_mean=round(float(area.mean()), 1), area_median=float(np.median(area)),
                         area_min=int(area.min()), area_max=int(area.max()),
                         coverage_mean=round(float((rows["mask_area"] / (rows["width"] * rows["height"]))
                                                   .dropna().astype(float).mean()), 5))
        if len(comps):
            entry.update(components_mean=round(float(comps.mean()), 2), components_max=int(comps.max()))
        stats[str(label)] = entry
    if mask_type == "class_index" and classes:
        pixels: defaultdict[str, int] = defaultdict(int)
        images: defaultdict[str, int] = defaultdict(int)
        for value in accepted["mask_class_pixels"].dropna():
            for index, count in json.loads(value).items():
                name = classes[int(index) - 1]
                pixels[name] += count
                images[name] += 1
        for name in classes:
            stats.setdefault(name, {"images": 0})
            stats[name]["class_pixels_total"] = int(pixels[name])
            stats[name]["images_with_class_pixels"] = int(images[name])
    return stats


def defect_free_looking_classes(manifest: pd.DataFrame, good_label: str) -> list[dict[str, Any]]:
    """Defect classes none of whose images has a defect pixel: every mask empty (or absent).

    Such a class is almost always a defect-free folder whose name ``data.good_labels`` does not
    match (its images were quarantined as ``empty_mask`` / ``missing_mask``); each entry names the
    class, the counts and the setting that fixes it.
    """
    rows = manifest[manifest["image_path"].notna() & manifest["label"].notna() & (manifest["label"] != good_label)]
    codes = rows["reason"].fillna("").map(_reason_code)
    empty = codes.isin(["empty_mask", "missing_mask"]) | rows["flags"].fillna("").str.contains("empty_mask")
    found = []
    for label, group in rows.groupby("label", sort=True):
        n_empty = int(empty[group.index].sum())
        if n_empty and not (group["mask_area"].fillna(0) > 0).any():
            found.append({
                "class": str(label), "images": int(len(group)), "empty_or_missing_masks": n_empty,
                "advice": f"class '{label}': none of its {len(group)} images has a defect pixel ({n_empty} with an "
                          f"empty or missing mask) — it looks defect-free. If it is, add '{label}' (or a word of "
                          "its folder name) to data.good_labels in conf/<env>/parameters_data.yml and run "
                          "`kedro run --pipeline=data` again",
            })
    return found


def build_data_report(manifest: pd.DataFrame, *, raw_source: dict, scan_summary: dict,
                      split_summary: dict, classes: list[str], good_label: str) -> dict[str, Any]:
    """Summarise the final manifest for people and for MLflow.

    The invariant ``accepted + quarantined == samples`` (and every scanned file present in
    exactly one row) is checked here and reported as ``accounting.balanced``.
    """
    accepted = manifest[manifest["status"] == "accepted"]
    quarantined = manifest[manifest["status"] == "quarantined"]
    files_in_rows = int(manifest["image_path"].notna().sum() + manifest["mask_path"].notna().sum())
    counts_by_split = {
        split: {str(k): int(v) for k, v in rows["label"].value_counts().sort_index().items()}
        for split, rows in accepted.groupby("split", sort=True)
    }
    reasons = Counter(_reason_code(r) for r in quarantined["reason"])
    mask_type = str(manifest["mask_type"].dropna().iloc[0]) if manifest["mask_type"].notna().any() else "binary"
    flags = _flag_counts(manifest["flags"])
    looks_defect_free = defect_free_looking_classes(manifest, good_label)
    return {
        "synthetic_demo_data": raw_source.get("source") == "demo",
        "raw_root": raw_source.get("raw_root"),
        "layout": scan_summary.get("layout"),
        "mask_type": mask_type,
        "classes": classes,
        "good_label": good_label,
        "class_prefix": scan_summary.get("class_prefix", ""),
        "good_folders": scan_summary.get("good_folders", []),
        "defect_free_looking_classes": looks_defect_free,
        "manifest_hash": manifest_hash(manifest),
        "accounting": {
            "files_scanned": int(scan_summary.get("files_scanned", files_in_rows)),
            "files_in_manifest": files_in_rows,
            "samples": int(len(manifest)),
            "accepted": int(len(accepted)),
            "quarantined": int(len(quarantined)),
            "balanced": bool(len(accepted) + len(quarantined) == len(manifest)
                             and files_in_rows == scan_summary.get("files_scanned", files_in_rows)),
            "ignored_files": scan_summary.get("ignored_files", []),
        },
        "quarantine_reasons": dict(sorted(reasons.items())),
        "flags": flags,
        "class_counts": counts_by_split,
        "class_counts_total": {str(k): int(v) for k, v in accepted["label"].value_counts().sort_index().items()},
        "image_modes": {str(k): int(v) for k, v in manifest["mode"].value_counts().sort_index().items()},
        "image_sizes": {f"{int(w)}x{int(h)}": int(n) for (w, h), n in
                        accepted.groupby(["width", "height"]).size().sort_index().items()},
        "duplicates": {
            "exact_copies": int(manifest["duplicate_of"].notna().sum()),
            "groups": int(manifest["duplicate_group"].dropna().nunique()),
            "samples_in_groups": int(manifest["duplicate_group"].notna().sum()),
            "leakage": split_summary.get("leakage", []),
        },
        "masks": {
            "binarized_lossy_masks": flags.get("mask_binarized", 0),
            "tiny_masks": flags.get("tiny_mask", 0),
            "multi_class_masks": flags.get("multi_class_mask", 0),
            "unknown_class_index": reasons.get("unknown_class_index", 0),
            "empty_defect_masks": reasons.get("empty_mask", 0) + flags.get("empty_mask", 0),
            "nonempty_good_masks": reasons.get("nonempty_good_mask", 0) + flags.get("nonempty_good_mask", 0),
            "per_class": _per_class_mask_stats(accepted, classes, mask_type),
        },
        "split": split_summary,
        "warnings": split_summary.get("warnings", [])
                    + [c["advice"] for c in looks_defect_free],
    }


def render_data_report_markdown(report: dict[str, Any], quarantine: pd.DataFrame, max_rows: int = 50) -> str:
    """A human-readable data report (Markdown)."""
    acc = report["accounting"]
    parts = ["# Data report", ""]
    if report["synthetic_demo_data"]:
        parts += ["> **Synthetic demo data** generated by defect_pipeline — not real defects.", ""]
    parts += [
        f"- Raw root: `{report['raw_root']}` ({report['layout']} layout, {report['mask_type']} masks)",
        f"- Classes: {', '.join(report['classes']) or '(none)'}; defect-free label: `{report['good_label']}`",
        f"- Files scanned: {acc['files_scanned']}; samples: {acc['samples']} = "
        f"**{acc['accepted']} accepted** + **{acc['quarantined']} quarantined** "
        f"({'balanced' if acc['balanced'] else 'NOT BALANCED'})",
        f"- Manifest hash: `{report['manifest_hash'][:16]}`",
        f"- Split: {report['split'].get('strategy')} (seed {report['split'].get('seed')})",
    ]
    if report.get("good_folders"):
        parts.append(f"- Defect-free folders (a word of the name is in data.good_labels): "
                     f"{', '.join(report['good_folders'])}")
    if report.get("class_prefix"):
        parts.append(f"- Prefix shared by every class folder, stripped from class names: `{report['class_prefix']}` "
                     "(data.class_prefix: null keeps the folder names)")
    if acc["ignored_files"]:
        parts.append(f"- Not part of the layout (left alone): {', '.join(acc['ignored_files'][:20])}")
    for entry in report.get("defect_free_looking_classes", []):
        parts.append(f"- **Looks defect-free**: {entry['advice']}")
    parts += ["", "## Accepted samples per split and class", ""]
    labels = sorted({label for counts in report["class_counts"].values() for label in counts})
    splits = sorted(report["class_counts"])
    parts.append(markdown_table(["label", *splits, "total"],
                        [[label, *[report["class_counts"][s].get(label, 0) for s in splits],
                          report["class_counts_total"].get(label, 0)] for label in labels]))
    parts += ["", "## Quarantined", ""]
    if report["quarantine_reasons"]:
        parts.append(markdown_table(["reason", "count"], [[k, v] for k, v in report["quarantine_reasons"].items()]))
        parts += ["", f"First {min(max_rows, len(quarantine))} of {len(quarantine)} (all in quarantine.csv):", ""]
        parts.append(markdown_table(["file", "reason"], [[r.file, r.reason] for r in quarantine.head(max_rows).itertuples()]))
    else:
        parts.append("Nothing quarantined.")
    parts += ["", "## Flags on accepted samples", ""]
    parts.append(markdown_table(["flag", "count"], [[k, v] for k, v in report["flags"].items()])
                 if report["flags"] else "No flags.")
    dup = report["duplicates"]
    parts += ["", "## Duplicates", "",
              f"- Exact copies: {dup['exact_copies']}; duplicate groups: {dup['groups']} "
              f"({dup['samples_in_groups']} samples)",
              f"- Groups straddling splits (leakage): {len(dup['leakage'])}"]
    for item in dup["leakage"][:max_rows]:
        parts.append(f"  - {item['splits']}: {', '.join(item['images'][:4])}"
                     + (f" — {item['resolved']}" if item.get("resolved") else ""))
    masks = report["masks"]
    parts += ["", "## Masks", "",
              f"- Lossy binary masks binarized: {masks['binarized_lossy_masks']}; tiny masks: "
              f"{masks['tiny_masks']}; multi-class masks: {masks['multi_class_masks']}",
              f"- Unknown class index: {masks['unknown_class_index']}; defect label with empty mask: "
              f"{masks['empty_defect_masks']}; defect-free label with non-empty mask: {masks['nonempty_good_masks']}",
              ""]
    stat_keys = ["images", "area_mean", "area_median", "area_min", "area_max", "coverage_mean", "components_mean"]
    parts.append(markdown_table(["class", *stat_keys],
                        [[name, *[entry.get(k, "") for k in stat_keys]] for name, entry in masks["per_class"].items()]))
    parts += ["", "## Image modes and sizes", "",
              ", ".join(f"{k}: {v}" for k, v in report["image_modes"].items()),
              "", ", ".join(f"{k}: {v}" for k, v in list(report["image_sizes"].items())[:20])]
    if report["warnings"]:
        parts += ["", "## Warnings", ""] + [f"- {w}" for w in report["warnings"]]
    return "\n".join(parts) + "\n"


def quarantine_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """Every quarantined file with its reason (one row per manifest row)."""
    q = manifest[manifest["status"] == "quarantined"]
    return pd.DataFrame({
        "sample_id": q["sample_id"].astype("string"),
        "file": q["image_path"].fillna(q["mask_path"]).astype("string"),
        "mask_path": q["mask_path"].astype("string"),
        "label": q["label"].astype("string"),
        "source_split": q["source_split"].astype("string"),
        "reason": q["reason"].astype("string"),
    }).reset_index(drop=True)
