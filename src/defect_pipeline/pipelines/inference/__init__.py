"""``inference``: predict a folder of images (or, in ``kedro run``, the test split)."""

from defect_pipeline.pipelines.inference.pipeline import create_pipeline, create_test_split_pipeline

__all__ = ["create_pipeline", "create_test_split_pipeline"]
