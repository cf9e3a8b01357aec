"""Nodes of the training stages and the augmentation preview.

One node, :func:`train_stage`, is the whole of a stage; the ``stage1``/``stage2``/``stage3``
pipelines are the same definition under three namespaces with their own parameter blocks. The
parameter blocks arrive validated (Kedro builds the annotated parameter models); the stage is
assembled and run by :mod:`defect_pipeline.ml.stage`, with an MLflow logger injected for the
per-epoch metrics, and its results go back to the catalog by name.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from defect_pipeline.config import (
    AugmentationParams,
    DataParams,
    DiagnosisParams,
    ModelParams,
    RuntimeParams,
    StageParams,
    TrainerParams,
)
from defect_pipeline.ml.augment import validate_recipe
from defect_pipeline.ml.checkpoint import CheckpointStore
from defect_pipeline.ml.dataset import ManifestDataset, labels_from_manifest
from defect_pipeline.ml.distributed import resolve_trainer
from defect_pipeline.ml.preview import render_preview
from defect_pipeline.ml.stage import build_training_job, join_stage, preview_transform, run_stage
from defect_pipeline.ml.val_preview import FigureFolder
from defect_pipeline.tracking.runs import MlflowTrainingLogger, log_stage_result


def preview_augmentation(manifest: pd.DataFrame, raw_source: dict[str, Any], scan_summary: dict[str, Any],
                         augmentation: AugmentationParams, model: ModelParams, data: DataParams,
                         trainer: TrainerParams) -> Figure:
    """A grid of training samples × augmented views (crops first in ``crop`` input mode) with masks overlaid,
    at the image size the stages train at (``model.image_size: auto`` resolved for ``trainer``'s device)."""
    validate_recipe(augmentation.recipe)
    labels = labels_from_manifest(manifest, defect_classes=list(scan_summary["classes"]), good_label=data.good_label)
    dataset = ManifestDataset(manifest, root=raw_source["raw_root"], split="train", labels=labels, transform=None,
                              seg_mode=model.seg_mode, binarize_threshold=data.masks.binarize_threshold)
    samples = [dataset.load_raw(i) for i in range(min(augmentation.preview_samples, len(dataset)))]
    transform = preview_transform(manifest, model, augmentation, settings=resolve_trainer(**trainer.model_dump()),
                                  good_label=data.good_label)  # crops first when training takes crops
    return render_preview(samples, transform, views=augmentation.preview_views, seed=augmentation.seed)


def train_stage(manifest: pd.DataFrame, raw_source: dict[str, Any], scan_summary: dict[str, Any],
                checkpoint_dir: CheckpointStore, preview_dir: FigureFolder, model: ModelParams,
                augmentation: AugmentationParams, data: DataParams, runtime: RuntimeParams,
                diagnosis: DiagnosisParams, trainer: TrainerParams, stage: StageParams,
                init_store: CheckpointStore | None = None, *, stage_name: str) -> dict[str, Any]:
    """Train one stage; its results keyed by :class:`~defect_pipeline.ml.stage.StageResult` field.

    Epoch and step metrics go to the active MLflow run (the stage's child run) as they come, the
    validation previews into ``preview_dir`` and the run's artifacts, the best and final figures
    when the stage ends.
    """
    tracker = MlflowTrainingLogger(rows_by_step=stage.val_every_n_steps is not None, figures=preview_dir,
                                   artifact_path=stage_name)
    plan = build_training_job(manifest, raw_root=raw_source["raw_root"], defect_classes=scan_summary["classes"],
                              checkpoints=checkpoint_dir, model=model, stage=stage, augmentation=augmentation,
                              data=data, runtime=runtime, trainer=trainer, stage_name=stage_name,
                              init_store=init_store, training_logger=tracker)
    result = run_stage(plan, diagnosis)
    log_stage_result(result.summary)
    return result.outputs()


def join_stage_training(manifest: pd.DataFrame, raw_source: dict[str, Any], scan_summary: dict[str, Any],
                        checkpoint_dir: CheckpointStore, model: ModelParams, augmentation: AugmentationParams,
                        data: DataParams, runtime: RuntimeParams, trainer: TrainerParams, stage: StageParams,
                        init_store: CheckpointStore | None = None, *, stage_name: str) -> None:
    """Run this node's ranks of a multi-node stage whose node 0 runs ``kedro run --pipeline=<stage>``.

    Builds the same job from the same inputs and parameters and writes nothing: checkpoints,
    MLflow and the catalog outputs belong to node 0 (``kedro join-training``, docs/distributed.md).
    """
    join_stage(build_training_job(manifest, raw_root=raw_source["raw_root"], defect_classes=scan_summary["classes"],
                                  checkpoints=checkpoint_dir, model=model, stage=stage, augmentation=augmentation,
                                  data=data, runtime=runtime, trainer=trainer, stage_name=stage_name,
                                  init_store=init_store))
