"""``thresholds``: tune the operating point on validation predictions."""

from defect_pipeline.pipelines.thresholds.pipeline import create_pipeline

__all__ = ["create_pipeline"]
