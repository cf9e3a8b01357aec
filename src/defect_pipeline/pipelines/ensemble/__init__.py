"""``ensemble``: model ensembles and test-time augmentation, tuned on validation and compared on test."""

from defect_pipeline.pipelines.ensemble.pipeline import create_pipeline

__all__ = ["create_pipeline"]
