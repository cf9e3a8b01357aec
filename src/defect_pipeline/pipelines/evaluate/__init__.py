"""``evaluate``: test-split metrics at fixed and tuned thresholds, curves, worst predictions."""

from defect_pipeline.pipelines.evaluate.pipeline import create_pipeline

__all__ = ["create_pipeline"]
