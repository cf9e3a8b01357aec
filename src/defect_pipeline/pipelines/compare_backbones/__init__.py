"""``compare_backbones``: equal-budget training of several backbones, a table and recommendations."""

from defect_pipeline.pipelines.compare_backbones.pipeline import create_pipeline

__all__ = ["create_pipeline"]
