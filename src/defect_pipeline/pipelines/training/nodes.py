"""Nodes of the training stages and the augmentation preview.

One node, :func:`train_stage`, is the whole of a stage; the ``stage1``/``stage2``/``stage3``
pipelines are the same definition under three namespaces with their own parameter blocks. It
validates the blocks, builds data loaders over the manifest, the model and the loss, decides
where the weights start (scratch, the previous stage's ``best``, or a file), and hands
everything to :func:`defect_pipeline.ml.engine.train`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
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
from defect_pipeline.data.manifest import manifest_hash
from defect_pipeline.ml.augment import build_transform, render_preview, validate_recipe
from defect_pipeline.ml.checkpoint import CheckpointStore, check_compatible, read_weights_file
from defect_pipeline.ml.curves import plot_training_curves
from defect_pipeline.ml.diagnosis import diagnose, render_diagnosis_markdown
from defect_pipeline.ml.dataset import ManifestDataset, class_counts, labels_from_manifest
from defect_pipeline.ml.distributed import TrainerSettings, launch, resolve_trainer
from defect_pipeline.ml.engine import EngineConfig, TrainingJob, run_training_job
from defect_pipeline.ml.labels import LabelSpace
from defect_pipeline.ml.losses import ClassificationLoss, MultitaskLoss, SegmentationLoss
from defect_pipeline.ml.metrics import MultitaskMetrics
from defect_pipeline.ml.model import check_input_size, count_parameters, create_model, load_backbone_state
from defect_pipeline.ml.predict import ModelPackage
from defect_pipeline.tracking.runs import MlflowTrainingLogger, log_stage_result

logger = logging.getLogger(__name__)


def _label_space(manifest: pd.DataFrame, scan_summary: dict[str, Any], data: DataParams) -> LabelSpace:
    return labels_from_manifest(manifest, defect_classes=list(scan_summary["classes"]), good_label=data.good_label)


def preview_augmentation(manifest: pd.DataFrame, raw_source: dict[str, Any], scan_summary: dict[str, Any],
                         augmentation: dict[str, Any], model: dict[str, Any], data: dict[str, Any]) -> Figure:
    """A grid of training samples × augmented views with masks overlaid."""
    aug, model_cfg, data_cfg = (AugmentationParams.model_validate(augmentation), ModelParams.model_validate(model),
                                DataParams.model_validate(data))
    validate_recipe(aug.recipe)
    labels = _label_space(manifest, scan_summary, data_cfg)
    dataset = ManifestDataset(manifest, root=raw_source["raw_root"], split="train", labels=labels, transform=None,
                              seg_mode=model_cfg.seg_mode, binarize_threshold=data_cfg.masks.binarize_threshold)
    samples = [dataset.load_raw(i) for i in range(min(aug.preview_samples, len(dataset)))]
    transform = build_transform(aug.recipe, image_size=model_cfg.image_size, train=True, seed=aug.seed, for_display=True)
    return render_preview(samples, transform, views=aug.preview_views, seed=aug.seed)


def _initial_weights(stage: str, cfg: StageParams, init_store: CheckpointStore | None) -> tuple[dict | None, str]:
    """The state dict a stage starts from (None = fresh model) and a description of it."""
    if cfg.init_from == "scratch":
        return None, "scratch"
    if cfg.init_from.startswith("stage"):
        if init_store is None or cfg.init_from != Path(init_store.path).name:
            raise ValueError(f"{stage}.init_from is {cfg.init_from!r}, but {stage} can only start from the "
                             "previous stage, scratch or a checkpoint file")
        if not init_store.has_best():
            raise FileNotFoundError(
                f"{stage} starts from {cfg.init_from}'s best checkpoint, but {init_store.best_path} does not exist. "
                f"Run `kedro run --pipeline={cfg.init_from}` first, or set {stage}.init_from: scratch."
            )
        return read_weights_file(init_store.best_path), str(init_store.best_path)
    return read_weights_file(cfg.init_from), cfg.init_from


def global_batch_size(stage: StageParams, settings: Any) -> int:
    """Samples per optimizer step: per-process batch x processes x accumulation."""
    return stage.batch_size * settings.world_size * stage.accumulate_grad_batches


# history column → whether higher is better; the best of each over the epochs is in the summary
BEST_VALUE_COLUMNS = {"val_loss": False, "val_combined_score": True, "val_miou": True, "val_macro_f1": True}


def _best_values(history: pd.DataFrame) -> dict[str, float]:
    return {column: float(history[column].max() if higher else history[column].min())
            for column, higher in BEST_VALUE_COLUMNS.items()
            if column in history.columns and history[column].notna().any()}


@dataclass
class _StagePlan:
    """A stage ready to train: the job every process runs, and what the outputs are built from."""

    job: TrainingJob
    settings: TrainerSettings
    net: Any
    model_cfg: ModelParams
    cfg: StageParams
    labels: LabelSpace
    meta: dict[str, Any]
    init_description: str


def _log_advice(manifest: pd.DataFrame, trainer: dict[str, Any], stage_name: str) -> None:
    """The recipe advice for this data and machine, in the log only (``kedro run --pipeline=advise``)."""
    from defect_pipeline.pipelines.advise.nodes import machine_advice

    try:
        advice = machine_advice(manifest, trainer)
    except (ValueError, KeyError) as error:  # advice is optional: a manifest it cannot read must not stop training
        logger.debug("no recipe advice: %s", error)
        return
    rec = advice["recommendations"]
    logger.info("%s: recipe advice for %d training samples (not applied; kedro run --pipeline=advise explains it): "
                "backbone %s, image_size %d, batch %d x %d accumulation, epochs %s, class_weights %s", stage_name,
                advice["facts"]["train_samples"], rec["backbone"], rec["image_size"], rec["batch_size"],
                rec["accumulate_grad_batches"], "/".join(str(v) for v in rec["epochs"].values()),
                rec["class_weights"])


def _plan_stage(manifest: pd.DataFrame, raw_source: dict[str, Any], scan_summary: dict[str, Any],
                checkpoint_dir: CheckpointStore, model: dict[str, Any], augmentation: dict[str, Any],
                data: dict[str, Any], runtime: dict[str, Any], trainer: dict[str, Any], stage: dict[str, Any],
                init_store: CheckpointStore | None, stage_name: str) -> _StagePlan:
    """Validate the blocks, decide where the weights start, build model, loss and datasets."""
    model_cfg, aug, data_cfg, cfg = (ModelParams.model_validate(model), AugmentationParams.model_validate(augmentation),
                                     DataParams.model_validate(data), StageParams.model_validate(stage))
    runtime_cfg = RuntimeParams.model_validate(runtime)
    trainer_cfg = TrainerParams.model_validate(trainer)
    settings = resolve_trainer(**trainer_cfg.model_dump())
    if runtime_cfg.cpu_threads is not None:
        torch.set_num_threads(runtime_cfg.cpu_threads)
    _log_advice(manifest, trainer, stage_name)
    validate_recipe(aug.recipe)
    labels = _label_space(manifest, scan_summary, data_cfg)
    init_state, init_description = (None, "resume") if (cfg.resume and checkpoint_dir.has_last()) else \
        _initial_weights(stage_name, cfg, init_store)

    torch.manual_seed(cfg.seed)
    net = create_model(model_cfg.backbone, num_image_classes=labels.num_image_classes,
                       num_seg_classes=labels.num_seg_classes, seg_mode=model_cfg.seg_mode, decoder=model_cfg.decoder,
                       pretrained=model_cfg.pretrained and init_state is None and init_description == "scratch",
                       checkpoint_path=model_cfg.checkpoint_path if init_description == "scratch" else None,
                       decoder_channels=model_cfg.decoder_channels, image_size=model_cfg.image_size)
    check_input_size(net, model_cfg.image_size)
    model_meta = {"backbone": model_cfg.backbone, "decoder": net.decoder_name, "seg_mode": model_cfg.seg_mode,
                  "image_size": model_cfg.image_size}
    if init_state is not None:
        if "model" in init_state:
            check_compatible(init_state, **{k: model_meta[k] for k in ("backbone", "decoder", "seg_mode")},
                             labels=labels.to_dict(), source=init_description)
            net.load_state_dict(init_state["model"])
        else:
            load_backbone_state(net, init_state, source=init_description)
    logger.info("%s: starting from %s", stage_name, init_description)

    root = raw_source["raw_root"]
    common = {"root": root, "labels": labels, "seg_mode": model_cfg.seg_mode,
              "binarize_threshold": data_cfg.masks.binarize_threshold}
    train_set = ManifestDataset(manifest, split="train",
                                transform=build_transform(aug.recipe, image_size=model_cfg.image_size, train=True,
                                                          seed=cfg.seed), **common)
    val_set = ManifestDataset(manifest, split="val",
                              transform=build_transform(aug.recipe, image_size=model_cfg.image_size, train=False),
                              **common)
    if len(train_set) == 0 or len(val_set) == 0:
        raise ValueError(f"{stage_name}: the manifest has {len(train_set)} accepted train and {len(val_set)} val "
                         "samples; both must be non-empty (run the data pipeline, check data.split)")

    class_weights = None
    if cfg.loss.class_weights == "balanced":
        counts = torch.tensor(class_counts(train_set), dtype=torch.float32).clamp(min=1)
        class_weights = (counts.sum() / (len(counts) * counts)).tolist()
    elif isinstance(cfg.loss.class_weights, list):
        class_weights = cfg.loss.class_weights
    loss = cfg.loss
    loss_fn = MultitaskLoss(
        ClassificationLoss(labels.num_image_classes, class_weights=class_weights, label_smoothing=loss.label_smoothing),
        SegmentationLoss(model_cfg.seg_mode, ce_weight=loss.ce_weight, dice_weight=loss.dice_weight),
        weighting=loss.weighting, alpha=loss.alpha, beta=loss.beta, alpha_start=loss.alpha_start,
        alpha_end=loss.alpha_end, beta_start=loss.beta_start, beta_end=loss.beta_end)
    device = settings.accelerator
    engine_cfg = EngineConfig(
        epochs=cfg.epochs, lr=cfg.lr, backbone_lr=cfg.backbone_lr or cfg.lr, weight_decay=cfg.weight_decay,
        warmup_epochs=cfg.warmup_epochs, warmup_lr_ratio=cfg.warmup_lr_ratio, eta_min_ratio=cfg.eta_min_ratio,
        grad_clip=cfg.grad_clip, accumulate_grad_batches=cfg.accumulate_grad_batches,
        precision=settings.precision, device=device, monitor=cfg.early_stopping.monitor,
        mode=cfg.early_stopping.mode, patience=cfg.early_stopping.patience, min_delta=cfg.early_stopping.min_delta,
        dropout_rate=cfg.dropout.rate, dropout_warmup_step=cfg.dropout.warmup_step,
        freeze_backbone=cfg.freeze_backbone, seed=cfg.seed, max_batches_per_epoch=cfg.max_batches_per_epoch,
        resume=cfg.resume, time_budget_s=cfg.time_budget_s)
    meta = {"stage": stage_name, "model_meta": model_meta, "labels": labels.to_dict(),
            "config": {"model": model_cfg.model_dump(), "stage": cfg.model_dump(mode="json"),
                       "augmentation": aug.model_dump(mode="json")},
            "manifest_hash": manifest_hash(manifest), "init_from": init_description,
            "trainer": {**settings.describe(), "global_batch_size": global_batch_size(cfg, settings)}}
    logger.info("%s: %d train / %d val samples, %s x %d process(es), precision %s, batch %d per process x %d "
                "processes x %d accumulation = %d samples per optimizer step", stage_name, len(train_set),
                len(val_set), device, settings.world_size, engine_cfg.precision, cfg.batch_size, settings.world_size,
                cfg.accumulate_grad_batches, meta["trainer"]["global_batch_size"])
    tracker = MlflowTrainingLogger()
    job = TrainingJob(net, loss_fn, train_set, val_set, MultitaskMetrics(labels, model_cfg.seg_mode), engine_cfg,
                      checkpoint_dir, meta, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                      training_logger=tracker, cpu_threads=runtime_cfg.cpu_threads)
    return _StagePlan(job, settings, net, model_cfg, cfg, labels, meta, init_description)


def join_stage_training(manifest: pd.DataFrame, raw_source: dict[str, Any], scan_summary: dict[str, Any],
                        checkpoint_dir: CheckpointStore, model: dict[str, Any], augmentation: dict[str, Any],
                        data: dict[str, Any], runtime: dict[str, Any], trainer: dict[str, Any], stage: dict[str, Any],
                        init_store: CheckpointStore | None = None, *, stage_name: str) -> None:
    """Run this node's ranks of a multi-node stage whose node 0 runs ``kedro run --pipeline=<stage>``.

    Builds the same job from the same inputs and parameters and writes nothing: checkpoints,
    MLflow and the catalog outputs belong to node 0 (``kedro join-training``, docs/distributed.md).
    """
    plan = _plan_stage(manifest, raw_source, scan_summary, checkpoint_dir, model, augmentation, data, runtime,
                       trainer, stage, init_store, stage_name)
    if plan.settings.num_nodes < 2:
        raise ValueError(f"joining {stage_name} needs trainer.num_nodes > 1 (got {plan.settings.num_nodes}); pass "
                         "the same --env/--params as node 0's kedro run")
    plan.job.training_logger = None
    launch(plan.settings, run_training_job, plan.job, joining=True)


def train_stage(manifest: pd.DataFrame, raw_source: dict[str, Any], scan_summary: dict[str, Any],
                checkpoint_dir: CheckpointStore, model: dict[str, Any], augmentation: dict[str, Any],
                data: dict[str, Any], runtime: dict[str, Any], diagnosis: dict[str, Any], trainer: dict[str, Any],
                stage: dict[str, Any], init_store: CheckpointStore | None = None, *, stage_name: str
                ) -> tuple[CheckpointStore, pd.DataFrame, dict, Figure, ModelPackage, pd.DataFrame, dict, str]:
    """Train one stage.

    Returns the checkpoint store, the history, a summary, the curves, the best checkpoint as a
    model package, the per-step rows and the curve diagnosis (JSON and Markdown). Epoch and step
    metrics go to the active MLflow run (the stage's child run) as they come.

    With ``trainer.devices x trainer.num_nodes > 1`` the training itself runs in worker processes
    launched by Lightning Fabric (:func:`defect_pipeline.ml.distributed.launch`); this node, its
    catalog outputs and the MLflow run stay in this process, and rank 0 writes the checkpoints.
    """
    plan = _plan_stage(manifest, raw_source, scan_summary, checkpoint_dir, model, augmentation, data, runtime,
                       trainer, stage, init_store, stage_name)
    model_cfg, cfg, net, labels, meta = plan.model_cfg, plan.cfg, plan.net, plan.labels, plan.meta
    device, engine_cfg, init_description = plan.settings.accelerator, plan.job.config, plan.init_description
    tracker = plan.job.training_logger
    result = launch(plan.settings, run_training_job, plan.job)
    if result.already_finished:  # nothing trained: the child run still shows the stage's curves
        tracker.log_steps(result.steps)
        for row in result.history:
            tracker.log_epoch(int(row["epoch"]), int(row["global_step"]), row)
    history = pd.DataFrame(result.history)
    monitor = f"val_{cfg.early_stopping.monitor}"
    summary = {
        "stage": stage_name, "backbone": model_cfg.backbone, "decoder": net.decoder_name,
        "device": device, "precision": engine_cfg.precision, "trainer": meta["trainer"],
        "init_from": init_description, "monitor": monitor, "best_metric": result.best_metric,
        "best_epoch": result.best_epoch, "epochs_run": result.epochs_run, "global_step": result.global_step,
        "total_steps": result.total_steps, "stopped_early": result.stopped_early, "stop_reason": result.stop_reason,
        "already_finished": result.already_finished, "resumed_from_epoch": result.resumed_from_epoch,
        "best_checkpoint": str(checkpoint_dir.best_path), "last_checkpoint": str(checkpoint_dir.last_path),
        "parameters": count_parameters(net), "labels": labels.to_dict(), "manifest_hash": meta["manifest_hash"],
        "final": {k: v for k, v in (result.history[-1] if result.history else {}).items()},
        "best_values": _best_values(history),
    }
    steps = pd.DataFrame(result.steps)
    diagnosis_cfg = DiagnosisParams.model_validate(diagnosis).config(monitor=monitor, mode=cfg.early_stopping.mode)
    report = diagnose(history, diagnosis_cfg, steps=steps, stopped_early=result.stop_reason == "early_stopping")
    summary["diagnosis"] = [f"{f['severity']}: {f['kind']}" for f in report["findings"]]
    for finding in report["findings"]:
        if finding["severity"] != "info":
            logger.warning("%s diagnosis — %s: %s. %s", stage_name, finding["kind"], finding["message"],
                           finding["recommendation"])
    log_stage_result(summary)
    curves = plot_training_curves(history, monitor=monitor, title=f"{stage_name}: {model_cfg.backbone}")
    best_kind = "best" if checkpoint_dir.has_best() else "last"
    package = ModelPackage.from_checkpoint(checkpoint_dir.load(best_kind),
                                           source=str(checkpoint_dir.best_path if best_kind == "best"
                                                      else checkpoint_dir.last_path))
    markdown = render_diagnosis_markdown(report, title=f"{stage_name} ({model_cfg.backbone})")
    return checkpoint_dir, history, summary, curves, package, steps, report, markdown
