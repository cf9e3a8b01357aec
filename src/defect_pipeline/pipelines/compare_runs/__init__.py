"""``compare_runs``: a table of the experiment's stage runs, and the best run per criterion."""

from defect_pipeline.pipelines.compare_runs.pipeline import create_pipeline

__all__ = ["create_pipeline"]
