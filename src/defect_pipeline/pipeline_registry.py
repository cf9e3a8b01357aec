"""Project pipelines: data, augmentation, stage1-3, training, thresholds, evaluate, inference, export,
compare_runs, diagnose, inspect_checkpoints, compare_backbones, ensemble, advise."""

from __future__ import annotations

from kedro.pipeline import Pipeline

from defect_pipeline.config import STAGES
from defect_pipeline.pipelines.advise import create_pipeline as create_advise_pipeline
from defect_pipeline.pipelines.compare_backbones import create_pipeline as create_compare_backbones_pipeline
from defect_pipeline.pipelines.compare_runs import create_pipeline as create_compare_runs_pipeline
from defect_pipeline.pipelines.data import create_pipeline as create_data_pipeline
from defect_pipeline.pipelines.diagnose import create_pipeline as create_diagnose_pipeline
from defect_pipeline.pipelines.ensemble import create_pipeline as create_ensemble_pipeline
from defect_pipeline.pipelines.evaluate import create_pipeline as create_evaluate_pipeline
from defect_pipeline.pipelines.export import create_pipeline as create_export_pipeline
from defect_pipeline.pipelines.inference import create_pipeline as create_inference_pipeline
from defect_pipeline.pipelines.inference import create_test_split_pipeline
from defect_pipeline.pipelines.inspect_checkpoints import create_pipeline as create_inspect_pipeline
from defect_pipeline.pipelines.registry import create_promote_pipeline, create_register_pipeline
from defect_pipeline.pipelines.thresholds import create_pipeline as create_thresholds_pipeline
from defect_pipeline.pipelines.training.pipeline import create_augmentation_pipeline, create_stage_pipeline


def register_pipelines() -> dict[str, Pipeline]:
    """Register the project's pipelines.

    ``__default__``: data → preview → stage1 → stage2 → stage3 → thresholds (+ register the tuned model)
    → evaluate (+ promote it) → inference on the test split. ``promote`` alone re-decides the champion
    from the last evaluation. ``inference`` (over ``inference.input_dir``), ``export`` (ONNX),
    ``compare_runs`` (reads MLflow), ``diagnose`` (any history.csv), ``inspect_checkpoints`` and
    ``compare_backbones``, ``ensemble`` and ``advise`` run on request.
    """
    stages = {name: create_stage_pipeline(name, previous) for previous, name in zip((None, *STAGES), STAGES)}
    pipelines: dict[str, Pipeline] = {
        "data": create_data_pipeline(),
        "augmentation": create_augmentation_pipeline(),
        **stages,
    }
    pipelines["training"] = sum(stages.values(), Pipeline([]))
    pipelines["thresholds"] = create_thresholds_pipeline() + create_register_pipeline()  # + registered as candidate
    pipelines["evaluate"] = create_evaluate_pipeline() + create_promote_pipeline()  # + champion if it is better
    pipelines["__default__"] = sum(pipelines.values(), Pipeline([])) + create_test_split_pipeline()
    pipelines["inference"] = create_inference_pipeline()
    pipelines["export"] = create_export_pipeline()
    pipelines["compare_runs"] = create_compare_runs_pipeline()
    pipelines["diagnose"] = create_diagnose_pipeline()
    pipelines["inspect_checkpoints"] = create_inspect_pipeline()
    pipelines["compare_backbones"] = create_compare_backbones_pipeline()
    pipelines["ensemble"] = create_ensemble_pipeline()
    pipelines["advise"] = create_advise_pipeline()
    pipelines["promote"] = create_promote_pipeline()
    return pipelines
