"""Project pipelines: ``data``, ``augmentation``, ``stage1``/``stage2``/``stage3``, ``training``."""

from __future__ import annotations

from kedro.pipeline import Pipeline

from defect_pipeline.pipelines.data import create_pipeline as create_data_pipeline
from defect_pipeline.pipelines.training.pipeline import STAGES, create_augmentation_pipeline, create_stage_pipeline


def register_pipelines() -> dict[str, Pipeline]:
    """Register the project's pipelines; ``__default__`` runs data → preview → stage1 → stage2 → stage3."""
    stages = {name: create_stage_pipeline(name, previous) for name, previous in STAGES.items()}
    pipelines: dict[str, Pipeline] = {
        "data": create_data_pipeline(),
        "augmentation": create_augmentation_pipeline(),
        **stages,
    }
    pipelines["training"] = sum(stages.values(), Pipeline([]))
    pipelines["__default__"] = sum(pipelines.values(), Pipeline([]))
    return pipelines
