"""Node of the ``export`` pipeline (the work is in :mod:`defect_pipeline.ml.export`)."""

from __future__ import annotations

from typing import Any

from defect_pipeline.config import ExportParams, RuntimeParams
from defect_pipeline.ml.export import OnnxExport, export_onnx
from defect_pipeline.ml.model_use import apply_runtime
from defect_pipeline.ml.package import ModelStore


def export(model: ModelStore, params: ExportParams, runtime: RuntimeParams) -> tuple[OnnxExport, dict[str, Any]]:
    """The tuned model as ONNX (the catalog writes it into the package folder) and the export report."""
    apply_runtime(runtime.cpu_threads)
    exported = export_onnx(model.load(), opset=params.opset, tolerance=params.parity_tolerance)
    return exported, exported.report
