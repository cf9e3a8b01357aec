"""Project pipelines: ``data``, ``augmentation``, ``stage1``/``stage2``/``stage3``, ``training``, ``compare_runs``."""

from __future__ import annotations

from kedro.pipeline import Pipeline

from defect_pipeline.pipelines.compare_runs import create_pipeline as create_compare_runs_pipeline
from defect_pipeline.pipelines.data import create_pipeline as create_data_pipeline
from defect_pipeline.pipelines.training.pipeline import STAGES, create_augmentation_pipeline, create_stage_pipeline


def register_pipelines() -> dict[str, Pipeline]:
    """Register the project's pipelines; ``__default__`` runs data → preview → stage1 → stage2 → stage3.

    ``compare_runs`` reads MLflow, not this run's outputs, so it is not part of ``__default__``.
    """
    stages = {name: create_stage_pipeline(name, previous) for name, previous in STAGES.items()}
    pipelines: dict[str, Pipeline] = {
        "data": create_data_pipeline(),
        "augmentation": create_augmentation_pipeline(),
        **stages,
    }
    pipelines["training"] = sum(stages.values(), Pipeline([]))
    pipelines["__default__"] = sum(pipelines.values(), Pipeline([]))
    pipelines["compare_runs"] = create_compare_runs_pipeline()
    return pipelines
