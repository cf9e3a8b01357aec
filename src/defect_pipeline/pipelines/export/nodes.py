"""Node of the ``export`` pipeline (the work is in :mod:`defect_pipeline.ml.export`)."""

from __future__ import annotations

from typing import Any

from defect_pipeline.config import ExportParams
from defect_pipeline.ml.export import export_onnx
from defect_pipeline.ml.predict import ModelStore
from defect_pipeline.pipelines.model_use import apply_runtime


def export(model: ModelStore, params: dict[str, Any], runtime: dict[str, Any]) -> dict[str, Any]:
    """Write ``model.onnx`` into the tuned package folder; the report (parity, opset) is the output."""
    cfg = ExportParams.model_validate(params)
    apply_runtime(runtime)
    return export_onnx(model.load(), model.path, opset=cfg.opset, tolerance=cfg.parity_tolerance)
