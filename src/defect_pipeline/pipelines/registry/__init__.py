"""``registry``: register the tuned model (after thresholds) and promote it (after evaluate)."""

from defect_pipeline.pipelines.registry.pipeline import create_promote_pipeline, create_register_pipeline

__all__ = ["create_promote_pipeline", "create_register_pipeline"]
