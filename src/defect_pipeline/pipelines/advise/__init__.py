"""``advise``: backbone, input size, batch size, epochs and class weights suggested from the data and machine."""

from defect_pipeline.pipelines.advise.pipeline import create_pipeline

__all__ = ["create_pipeline"]
