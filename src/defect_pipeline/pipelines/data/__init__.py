"""The ``data`` pipeline: organize → check → validate_masks → split → report."""

from defect_pipeline.pipelines.data.pipeline import create_pipeline

__all__ = ["create_pipeline"]
