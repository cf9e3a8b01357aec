"""``inspect_checkpoints``: list a checkpoint folder and detail one checkpoint."""

from defect_pipeline.pipelines.inspect_checkpoints.pipeline import create_pipeline

__all__ = ["create_pipeline"]
