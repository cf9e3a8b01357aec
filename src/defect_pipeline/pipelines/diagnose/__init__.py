"""``diagnose``: the training-curve diagnosis of any ``history.csv``."""

from defect_pipeline.pipelines.diagnose.pipeline import create_pipeline

__all__ = ["create_pipeline"]
