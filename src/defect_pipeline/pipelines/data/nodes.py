"""Nodes of the ``data`` pipeline.

Each node gets its ``params:data`` block as a validated :class:`~defect_pipeline.config.DataParams`
(Kedro builds the models the arguments are annotated with), calls the library in :mod:`defect_pipeline.data`
and returns tables and dictionaries for the catalog to write. The raw images themselves are read
in place from ``data.raw_root`` (or the demo folder): the manifest records their paths relative
to that root.
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from defect_pipeline.config import DataParams
from defect_pipeline.data.demo import DemoSpec, write_demo_dataset
from defect_pipeline.data.layouts import ScanOptions, scan_raw_root
from defect_pipeline.data.manifest import finalize_manifest
from defect_pipeline.data.masks import resolve_mask_type
from defect_pipeline.data.masks import validate_masks as apply_mask_rules
from defect_pipeline.data.quality import apply_file_checks, inspect_manifest, mark_duplicates
from defect_pipeline.data.report import build_data_report, quarantine_table, render_data_report_markdown
from defect_pipeline.data.split import assign_splits

logger = logging.getLogger(__name__)


def resolve_raw_source(params: DataParams) -> dict[str, Any]:
    """Decide where the raw data is; generate the synthetic demo data when none is configured."""
    if params.raw_root is not None:
        return {"source": "user", "raw_root": params.raw_root}
    spec = DemoSpec(seed=params.demo.seed, images_per_class=params.demo.images_per_class,
                    good_images=params.demo.good_images, image_size=params.demo.image_size)
    summary = write_demo_dataset(params.demo.output_dir, spec)
    logger.info("Using the built-in SYNTHETIC demo data in %s (%s)", params.demo.output_dir,
                "generated" if summary["generated"] else "already present")
    return {"source": "demo", "raw_root": params.demo.output_dir, "demo_signature": summary["signature"],
            "demo_counts": summary["counts"]}


def organize(raw_source: dict[str, Any], params: DataParams) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Scan the raw root into one manifest row per sample (or unusable file)."""
    opts = ScanOptions(layout=params.layout, good_labels=tuple(params.good_labels), good_label=params.good_label,
                       mask_suffixes=tuple(params.mask_suffixes), image_extensions=tuple(params.image_extensions),
                       labels_csv=params.labels_csv, class_prefix=params.class_prefix,
                       classes=tuple(params.classes) if params.classes else None)
    scan = scan_raw_root(raw_source["raw_root"], opts)
    classes = params.classes or scan.class_folders
    summary = {"layout": scan.layout, "files_scanned": scan.files_scanned, "ignored_files": scan.ignored_files,
               "classes": classes, "mask_type": resolve_mask_type(params.mask_type, scan.layout),
               "class_prefix": scan.class_prefix, "good_folders": scan.good_folders}
    if scan.class_prefix:
        logger.info("organize: class folders share the prefix %r, stripped from class names (data.class_prefix)",
                    scan.class_prefix)
    logger.info("organize: %s layout, %d files scanned, %d rows", scan.layout, scan.files_scanned, len(scan.rows))
    return pd.DataFrame(scan.rows), summary


def check(manifest: pd.DataFrame, raw_source: dict[str, Any], scan_summary: dict[str, Any],
          params: DataParams) -> pd.DataFrame:
    """Decode every file (process pool), quarantine unusable ones, group duplicates."""
    measured = inspect_manifest(manifest, raw_source["raw_root"], mask_type=scan_summary["mask_type"],
                                binarize_threshold=params.masks.binarize_threshold,
                                num_workers=params.check.num_workers, chunksize=params.check.chunksize,
                                progress=params.check.progress)
    checked = apply_file_checks(measured, good_label=params.good_label, min_image_size=params.check.min_image_size)
    return mark_duplicates(checked, exact_policy=params.check.exact_duplicates,
                           near_max_distance=params.check.near_duplicate_max_distance)


def validate_masks(manifest: pd.DataFrame, scan_summary: dict[str, Any], params: DataParams) -> pd.DataFrame:
    """Apply the mask rules and resolve labels that come from masks."""
    return apply_mask_rules(manifest, mask_type=scan_summary["mask_type"], classes=scan_summary["classes"],
                            good_label=params.good_label, min_defect_pixels=params.masks.min_defect_pixels,
                            inconsistent_label=params.masks.inconsistent_label)


def split(manifest: pd.DataFrame, params: DataParams) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Assign train/val/test (seeded, stratified, duplicate groups kept together)."""
    outcome = assign_splits(manifest, strategy=params.split.strategy, seed=params.split.seed,
                            val_fraction=params.split.val_fraction, test_fraction=params.split.test_fraction)
    for warning in outcome.warnings:
        logger.warning("split: %s", warning)
    summary = {"strategy": outcome.strategy, "seed": params.split.seed, "val_fraction": params.split.val_fraction,
               "test_fraction": params.split.test_fraction, "warnings": outcome.warnings,
               "leakage": outcome.leakage_groups}
    return finalize_manifest(outcome.manifest), summary


def report(manifest: pd.DataFrame, raw_source: dict[str, Any], scan_summary: dict[str, Any],
           split_summary: dict[str, Any], params: DataParams) -> tuple[dict[str, Any], str, pd.DataFrame]:
    """Write the data report (JSON + Markdown) and the quarantine list."""
    data_report = build_data_report(manifest, raw_source=raw_source, scan_summary=scan_summary,
                                    split_summary=split_summary, classes=scan_summary["classes"],
                                    good_label=params.good_label)
    quarantine = quarantine_table(manifest)
    acc = data_report["accounting"]
    logger.info("data: %d samples = %d accepted + %d quarantined", acc["samples"], acc["accepted"], acc["quarantined"])
    if not acc["balanced"]:
        raise RuntimeError(f"data accounting does not balance: {acc}")
    return data_report, render_data_report_markdown(data_report, quarantine), quarantine
