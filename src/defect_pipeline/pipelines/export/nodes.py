"""Node of the ``export`` pipeline (the work is in :mod:`defect_pipeline.ml.export` and
:mod:`defect_pipeline.ml.quantize`)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from defect_pipeline.config import DataParams, ExportParams, RuntimeParams
from defect_pipeline.ml.export import OnnxExport, export_onnx
from defect_pipeline.ml.model_use import apply_runtime, split_dataset
from defect_pipeline.ml.package import ModelStore
from defect_pipeline.ml.quantize import quantize_export


def export(model: ModelStore, manifest: pd.DataFrame, raw_source: dict[str, Any], scan_summary: dict[str, Any],
           params: ExportParams, data: DataParams, runtime: RuntimeParams) -> tuple[OnnxExport, dict[str, Any]]:
    """The tuned model as ONNX (with ``export.quantize: int8`` also as int8, checked against fp32 on the
    calibration split); the catalog writes it into the package folder; and the export report."""
    apply_runtime(runtime.cpu_threads)
    package = model.load()
    exported = export_onnx(package, opset=params.opset, tolerance=params.parity_tolerance, provider=params.provider)
    if params.quantize == "int8":
        dataset = split_dataset(package, manifest, raw_source["raw_root"], defect_classes=scan_summary["classes"],
                                good_label=data.good_label, binarize_threshold=data.masks.binarize_threshold,
                                split=params.calibration_split)
        exported = quantize_export(exported, package, dataset, calibration_limit=params.calibration_images,
                                   provider=params.provider, threads=runtime.onnx_threads,
                                   batch_size=params.benchmark_batch_size, settings=params.int8_settings,
                                   max_miou_loss=params.int8_max_miou_loss)
    return exported, exported.report
