"""``export``: the tuned model to ONNX, with a parity check."""

from defect_pipeline.pipelines.export.pipeline import create_pipeline

__all__ = ["create_pipeline"]
