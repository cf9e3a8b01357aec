"""Assembly of one training stage: typed parameter blocks in, a ready job out, the stage's results after it ran.

:func:`build_training_job` turns the validated ``model``, ``stage``, ``augmentation``, ``data``,
``runtime`` and ``trainer`` blocks and the manifest into a :class:`StagePlan`: the
:class:`~defect_pipeline.ml.engine.TrainingJob` every training process runs (network, loss,
train/val datasets, engine settings, checkpoint store) and the resolved machine settings. It
decides where the weights start (scratch, the previous stage's ``best``, a checkpoint file, or
this stage's own ``last`` to resume), resolves the ``auto`` settings once, before anything is built
(:func:`resolve_auto`: image size, batch, epochs, sampler, class weights by the rules of
:mod:`defect_pipeline.ml.plan`) and ``model.input_mode`` (whole images resized, or crops:
:mod:`defect_pipeline.ml.input_mode`).
:func:`run_stage` launches the job (in this process or in Lightning Fabric workers) and turns
what it returns into a :class:`StageResult` (history, summary — including where the weights
started and the torch threads training used —, curves, the best checkpoint as a
model package, per-step rows, the curve diagnosis); :func:`join_stage` runs a non-zero node's
ranks of a multi-node stage. This is the one ``ml`` module that reads config models (typed
configs in, plain keyword arguments to the library); it imports neither Kedro nor MLflow: the
caller injects the training logger and records the result.
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from matplotlib.figure import Figure

from defect_pipeline.config import (
    STAGES,
    AugmentationParams,
    DataParams,
    DiagnosisParams,
    ModelParams,
    RuntimeParams,
    StageParams,
    TrainerParams,
)
from defect_pipeline.data.manifest import manifest_hash
from defect_pipeline.ml.augment import build_transform, validate_recipe
from defect_pipeline.ml.checkpoint import CheckpointStore, read_weights_file
from defect_pipeline.ml.crops import CropSampler, CroppedTransform
from defect_pipeline.ml.curves import plot_training_curves
from defect_pipeline.ml.dataset import ManifestDataset, class_counts, labels_from_manifest
from defect_pipeline.ml.diagnosis import DiagnosisConfig, diagnose, render_diagnosis_markdown
from defect_pipeline.ml.diagnosis_commands import RerunTarget
from defect_pipeline.ml.distributed import TrainerSettings, launch, resolve_trainer
from defect_pipeline.ml.engine import EngineConfig, TrainingJob, TrainingLogger, run_training_job
from defect_pipeline.ml.engine.ema import default_warmup_steps
from defect_pipeline.ml.input_mode import InputPlan, input_facts, package_input_meta, resolve_input_mode
from defect_pipeline.ml.labels import LabelSpace
from defect_pipeline.ml.losses import ClassificationLoss, MultitaskLoss, SegmentationLoss
from defect_pipeline.ml.metrics import MultitaskMetrics
from defect_pipeline.ml.models import check_input_size, count_parameters, create_model, input_stride
from defect_pipeline.ml.models.adapters import LoraSpec
from defect_pipeline.ml.models.starting_weights import load_starting_weights
from defect_pipeline.ml.package import ModelPackage
from defect_pipeline.ml.plan import AUTO, Resolved, StagePlanAuto, fingerprint, machine_from, plan_stage
from defect_pipeline.ml.plan import CLASS_WEIGHTS, loss_class_weights, resolve_image_size, sampling_weights
from defect_pipeline.ml.preprocess import resolve_preprocessing
from defect_pipeline.ml.speed import resolve_channels_last
from defect_pipeline.ml.stage_records import best_values, describe_initial_weights
from defect_pipeline.ml.val_preview import PreviewingLogger, ValidationPreview
from defect_pipeline.util import flatten

logger = logging.getLogger(__name__)

VAL_CROP_SEED = 0  # validation crops depend on (this, sample index) only: the same in every stage and run


@dataclass
class StagePlan:
    """A stage ready to train: the job every process runs, the machine settings, and what the results need."""

    job: TrainingJob
    settings: TrainerSettings
    stage_name: str
    model: ModelParams
    stage: StageParams
    labels: LabelSpace
    init_description: str  # "scratch", "resume", or the file the weights came from


@dataclass
class StageResult:
    """What a finished stage hands to the catalog (see :meth:`outputs`)."""

    checkpoints: CheckpointStore
    history: pd.DataFrame
    summary: dict[str, Any]
    curves: Figure
    package: ModelPackage  # the best checkpoint (the last one when no best was written) as a model package
    steps: pd.DataFrame
    diagnosis: dict[str, Any]
    diagnosis_md: str

    def outputs(self) -> dict[str, Any]:
        """Field name → value: a node returns this and its pipeline maps each name to a dataset."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def global_batch_size(stage: StageParams, settings: TrainerSettings) -> int:
    """Samples per optimizer step: per-process batch x processes x accumulation."""
    return stage.batch_size * settings.world_size * stage.accumulate_grad_batches


def initial_weights(stage_name: str, stage: StageParams, init_store: CheckpointStore | None
                    ) -> tuple[dict | None, str]:
    """The state dict a stage starts from (None = fresh model) and a description of it."""
    if stage.init_from == "scratch":
        return None, "scratch"
    if stage.init_from.startswith("stage"):
        if init_store is None or stage.init_from != Path(init_store.path).name:
            raise ValueError(f"{stage_name}.init_from is {stage.init_from!r}, but {stage_name} can only start from "
                             "the previous stage, scratch or a checkpoint file")
        if not init_store.has_best():
            raise FileNotFoundError(
                f"{stage_name} starts from {stage.init_from}'s best checkpoint, but {init_store.best_path} does not "
                f"exist. Run `kedro run --pipeline={stage.init_from}` first, or set {stage_name}.init_from: scratch."
            )
        return read_weights_file(init_store.best_path), str(init_store.best_path)
    return read_weights_file(stage.init_from), stage.init_from


def initial_weights_record(init_from: str, model: ModelParams) -> dict[str, Any]:
    """The summary's ``initial_weights``: ``init_from`` (as :func:`build_training_job` decided it),
    the ``model.pretrained`` / ``model.checkpoint_path`` :func:`_network` applied (only from
    scratch), and their :func:`describe_initial_weights`."""
    scratch = init_from == "scratch"
    pretrained = bool(model.pretrained and scratch)
    checkpoint_path = model.checkpoint_path if scratch else None
    return {"init_from": init_from, "pretrained": pretrained, "checkpoint_path": checkpoint_path,
            "description": describe_initial_weights(init_from, pretrained=pretrained, checkpoint_path=checkpoint_path)}


def resolve_auto(manifest: pd.DataFrame, model: ModelParams, stage: StageParams, *, settings: TrainerSettings,
                 good_label: str, stage_name: str) -> tuple[ModelParams, StageParams, StagePlanAuto]:
    """The one place ``auto`` settings become values (rules: :mod:`defect_pipeline.ml.plan`): the model and stage
    blocks with every ``auto`` replaced, and the plan that says why. Explicit values are kept."""
    requested = {"image_size": model.image_size, "batch_size": stage.batch_size, "epochs": stage.epochs,
                 "sampler": stage.sampler, "class_weights": stage.loss.class_weights}
    plan = plan_stage(fingerprint(manifest, good_label=good_label), machine_from(settings), stage_name=stage_name,
                      requested=requested, stride=input_stride(model.backbone, decoder=model.decoder),
                      backbone=model.backbone, accumulate=stage.accumulate_grad_batches,
                      time_budget_s=stage.time_budget_s, max_steps=stage.max_steps)
    value = {name: item.value for name, item in plan.settings.items()}
    model = model.model_copy(update={"image_size": value["image_size"]})
    stage = stage.model_copy(update={**{k: value[k] for k in ("batch_size", "epochs", "sampler")},
                                     "loss": stage.loss.model_copy(update={"class_weights": value["class_weights"]})})
    for item in plan.settings.values():
        logger.info("%s: %s = %s (%s)", stage_name, item.key, item.value,
                    f"auto: {item.reason}" if item.auto else "set explicitly")
    return model, stage, plan


def resolve_model_auto(manifest: pd.DataFrame, model: ModelParams, *, settings: TrainerSettings,
                       good_label: str) -> tuple[ModelParams, Resolved | None]:
    """The ``model`` block with ``image_size: auto`` resolved as every stage resolves it (for the
    augmentation preview and the backbone comparison's memory check)."""
    if model.image_size != AUTO:
        return model, None
    item = resolve_image_size(AUTO, fingerprint(manifest, good_label=good_label), machine_from(settings),
                              stride=input_stride(model.backbone, decoder=model.decoder))
    return model.model_copy(update={"image_size": item.value}), item


def plan_input(manifest: pd.DataFrame, model: ModelParams) -> InputPlan:
    """What ``model.input_mode`` resolves to for this manifest's training images (``auto``: the rule of
    :mod:`defect_pipeline.ml.input_mode`)."""
    facts = input_facts(manifest)
    return resolve_input_mode(model.input_mode, image_size=model.image_size, median_width=facts.median_width,
                              median_height=facts.median_height, median_defect_px=facts.median_defect_px)


def crop_samplers(plan: InputPlan, model: ModelParams, seed: int) -> tuple[CropSampler | None, CropSampler | None]:
    """The (train, val) crop samplers of a ``crop`` plan (random, seeded; deterministic per sample), else Nones."""
    if plan.mode != "crop":
        return None, None
    common = {"scale": model.crop.scale, "defect_rate": model.crop.defect_rate}
    return (CropSampler(model.image_size, **common, seed=seed),
            CropSampler(model.image_size, **common, seed=VAL_CROP_SEED, deterministic=True))


def preview_transform(manifest: pd.DataFrame, model: ModelParams, augmentation: AugmentationParams, *,
                      settings: TrainerSettings | None = None, good_label: str = "good") -> Any:
    """The display transform of the augmentation preview: what training sees (crops in ``crop`` mode), at the
    image size the stages resolve ``model.image_size: auto`` to on ``settings``' device (default: this machine)."""
    settings = settings or resolve_trainer(accelerator="auto", devices=1, strategy="auto", num_nodes=1, precision="fp32")
    model, _ = resolve_model_auto(manifest, model, settings=settings, good_label=good_label)
    transform = build_transform(augmentation.recipe, image_size=model.image_size, train=True, seed=augmentation.seed,
                                for_display=True)
    train_crop, _ = crop_samplers(plan_input(manifest, model), model, augmentation.seed)
    return transform if train_crop is None else CroppedTransform(train_crop, transform)


def _log_input_plan(plan: InputPlan, model: ModelParams, stage_name: str) -> None:
    logger.info("%s: input mode %s (model.input_mode: %s): %s", stage_name, plan.mode, plan.requested, plan.reason)
    if plan.mode == "crop":
        logger.info("%s: training on %d px crops at scale %g, %.0f %% placed on a defect pixel; the model package "
                    "records input_mode 'tile' (prediction slides a window)", stage_name, model.image_size,
                    model.crop.scale, 100 * model.crop.defect_rate)
    elif "crop" in model.model_fields_set:
        logger.warning("%s: model.crop is set but the input mode is resize, so it is not used", stage_name)


def _network(model: ModelParams, labels: LabelSpace, init_state: dict | None, init_description: str,
             seed: int, adapter: LoraSpec | None = None) -> tuple[Any, dict[str, Any]]:
    """The seeded network with its starting weights loaded, and its architecture description. Starting weights
    with LoRA adapters load into the same adapters, which are merged unless this stage keeps them; ``adapter``
    then adds this stage's (:mod:`~defect_pipeline.ml.models.adapters`)."""
    torch.manual_seed(seed)
    scratch = init_description == "scratch"
    net = create_model(model.backbone, num_image_classes=labels.num_image_classes,
                       num_seg_classes=labels.num_seg_classes, seg_mode=model.seg_mode, decoder=model.decoder,
                       pretrained=model.pretrained and init_state is None and scratch,
                       checkpoint_path=model.checkpoint_path if scratch else None,
                       decoder_channels=model.decoder_channels, image_size=model.image_size)
    check_input_size(net, model.image_size)
    model_meta = {"backbone": model.backbone, "decoder": net.decoder_name, "seg_mode": model.seg_mode,
                  "image_size": model.image_size}
    load_starting_weights(net, init_state, model_meta, labels=labels.to_dict(), source=init_description,
                          adapter=adapter)
    return net, model_meta


def _loss(stage: StageParams, labels: LabelSpace, seg_mode: str, train_set: ManifestDataset) -> MultitaskLoss:
    """The weighted classification + segmentation loss (``balanced``/``sqrt`` class weights from the train split)."""
    loss = stage.loss
    class_weights = None
    if loss.class_weights in CLASS_WEIGHTS:
        class_weights = loss_class_weights(loss.class_weights, class_counts(train_set))
    elif isinstance(loss.class_weights, list):
        class_weights = loss.class_weights
    return MultitaskLoss(
        ClassificationLoss(labels.num_image_classes, class_weights=class_weights, label_smoothing=loss.label_smoothing),
        SegmentationLoss(seg_mode, ce_weight=loss.ce_weight, dice_weight=loss.dice_weight),
        weighting=loss.weighting, alpha=loss.alpha, beta=loss.beta, alpha_start=loss.alpha_start,
        alpha_end=loss.alpha_end, beta_start=loss.beta_start, beta_end=loss.beta_end)


def _engine_config(stage: StageParams, settings: TrainerSettings, backbone: str) -> EngineConfig:
    s, stop = stage, stage.early_stopping
    channels_last, reason = resolve_channels_last(settings.channels_last, backbone)
    logger.info("%s", reason)
    return EngineConfig(
        channels_last=channels_last, compile=settings.compile,
        epochs=None if s.epochs == "auto" else s.epochs,  # auto: as long as time_budget_s
        lr=s.lr, backbone_lr=s.backbone_lr or s.lr, weight_decay=s.weight_decay,
        warmup_epochs=s.warmup_epochs, warmup_lr_ratio=s.warmup_lr_ratio, eta_min_ratio=s.eta_min_ratio,
        scheduler=s.scheduler, restart_epochs=s.restart_epochs, restart_mult=s.restart_mult,
        step_epochs=s.step_epochs, step_gamma=s.step_gamma,
        grad_clip=s.grad_clip, accumulate_grad_batches=s.accumulate_grad_batches,
        precision=settings.precision, device=settings.accelerator, monitor=stop.monitor,
        mode=stop.mode, patience=stop.patience, min_delta=stop.min_delta,
        dropout_rate=s.dropout.rate, dropout_warmup_step=s.dropout.warmup_step,
        freeze_backbone=s.freeze_backbone, seed=s.seed, max_batches_per_epoch=s.max_batches_per_epoch,
        resume=s.resume, time_budget_s=s.time_budget_s, max_steps=s.max_steps, val_every_n_steps=s.val_every_n_steps,
        checkpoint_every_n_steps=s.checkpoint_every_n_steps, keep_last_n=s.keep_last_n,
        ema_decay=s.ema.decay if s.ema.enabled else None,
        ema_warmup_steps=default_warmup_steps(s.ema.decay) if s.ema.warmup_steps is None else s.ema.warmup_steps)


def _last_weights(store: CheckpointStore) -> dict[str, Any]:
    return store.load("last")["model"]


def build_training_job(manifest: pd.DataFrame, *, raw_root: str, defect_classes: Sequence[str],
                       checkpoints: CheckpointStore, model: ModelParams, stage: StageParams,
                       augmentation: AugmentationParams, data: DataParams, runtime: RuntimeParams,
                       trainer: TrainerParams, stage_name: str, init_store: CheckpointStore | None = None,
                       training_logger: TrainingLogger | None = None) -> StagePlan:
    """Decide where the weights start, build model, loss and datasets: the stage, ready to :func:`run_stage`.

    ``checkpoints`` is this stage's store (``resume`` continues from its ``last``); ``init_store``
    the previous stage's, for ``init_from: stageN``. ``training_logger`` receives the per-epoch
    metrics and checkpoints on the main process (None: nothing is logged).
    """
    settings = resolve_trainer(**trainer.model_dump())
    if runtime.cpu_threads is not None:
        torch.set_num_threads(runtime.cpu_threads)
    validate_recipe(augmentation.recipe)
    labels = labels_from_manifest(manifest, defect_classes=list(defect_classes), good_label=data.good_label)
    model, stage, auto_plan = resolve_auto(manifest, model, stage, settings=settings, good_label=data.good_label,
                                           stage_name=stage_name)
    input_plan = plan_input(manifest, model)
    _log_input_plan(input_plan, model, stage_name)
    init_state, init_description = (None, "resume") if (stage.resume and checkpoints.has_last()) else \
        initial_weights(stage_name, stage, init_store)
    adapter = LoraSpec.from_dict(stage.adapter.model_dump()) if stage.adapter.type == "lora" else None
    net, model_meta = _network(model, labels, init_state, init_description, stage.seed, adapter)
    model_meta.update(package_input_meta(input_plan.mode, scale=model.crop.scale))
    logger.info("%s: starting from %s", stage_name, init_description)

    common = {"root": raw_root, "labels": labels, "seg_mode": model.seg_mode,
              "binarize_threshold": data.masks.binarize_threshold}
    train_crop, val_crop = crop_samplers(input_plan, model, stage.seed)
    prep = resolve_preprocessing(model.backbone)  # the backbone's mean/std/interpolation (timm's data config)
    eval_transform = prep.transform(augmentation.recipe, image_size=model.image_size, train=False)
    model_meta.update(prep.package_meta(eval_transform))  # the package rebuilds this transform at inference
    train_set = ManifestDataset(manifest, split="train", **common, crop=train_crop, transform=prep.transform(
        augmentation.recipe, image_size=model.image_size, train=True, seed=stage.seed))
    val_set = ManifestDataset(manifest, split="val", **common, crop=val_crop, transform=eval_transform)
    if len(train_set) == 0 or len(val_set) == 0:
        raise ValueError(f"{stage_name}: the manifest has {len(train_set)} accepted train and {len(val_set)} val "
                         "samples; both must be non-empty (run the data pipeline, check data.split)")
    loss_fn = _loss(stage, labels, model.seg_mode, train_set)
    engine_cfg = _engine_config(stage, settings, model.backbone)
    meta = {"stage": stage_name, "model_meta": model_meta, "labels": labels.to_dict(),
            "config": {"model": model.model_dump(), "stage": stage.model_dump(mode="json"),
                       "augmentation": augmentation.model_dump(mode="json")},
            "manifest_hash": manifest_hash(manifest), "init_from": init_description,
            "input_plan": {**input_plan.to_dict(),
                           "crop": model.crop.model_dump() if input_plan.mode == "crop" else None},
            "trainer": {**settings.describe(), "global_batch_size": global_batch_size(stage, settings)},
            "auto": auto_plan.to_dict()}
    logger.info("%s: %d train / %d val samples, %s x %d process(es), precision %s, batch %d per process x %d "
                "processes x %d accumulation = %d samples per optimizer step", stage_name, len(train_set),
                len(val_set), settings.accelerator, settings.world_size, engine_cfg.precision, stage.batch_size,
                settings.world_size, stage.accumulate_grad_batches, meta["trainer"]["global_batch_size"])
    if training_logger is not None and stage.preview_every_n_epochs > 0:  # drawn on the main process only
        ema = stage.ema.enabled  # the EMA is what validation measures: draw it, from last.pt, on a copy of net
        preview = ValidationPreview(copy.deepcopy(net) if ema else net, val_set, labels, seg_mode=model.seg_mode,
                                    mean=prep.mean, std=prep.std)
        training_logger = PreviewingLogger(training_logger, preview, every_n_epochs=stage.preview_every_n_epochs,
                                           stage=stage_name, by_step=stage.val_every_n_steps is not None,
                                           weights=functools.partial(_last_weights, checkpoints) if ema else None)
    job = TrainingJob(net, loss_fn, train_set, val_set, MultitaskMetrics(labels, model.seg_mode), engine_cfg,
                      checkpoints, meta, batch_size=stage.batch_size, num_workers=stage.num_workers,
                      training_logger=training_logger, cpu_threads=runtime.cpu_threads,
                      sample_weights=sampling_weights(train_set.targets) if stage.sampler == "balanced" else None)
    return StagePlan(job, settings, stage_name, model, stage, labels, init_description)


def _summary(plan: StagePlan, result: Any, history: pd.DataFrame, monitor: str) -> dict[str, Any]:
    store, meta = plan.job.store, plan.job.meta
    return {
        "stage": plan.stage_name, "backbone": plan.model.backbone, "decoder": plan.job.model.decoder_name,
        "device": plan.settings.accelerator, "precision": plan.job.config.precision, "trainer": meta["trainer"],
        "init_from": plan.init_description, "ema": None if plan.job.config.ema_decay is None else
        {"decay": plan.job.config.ema_decay, "warmup_steps": plan.job.config.ema_warmup_steps},
        "initial_weights": initial_weights_record(plan.init_description, plan.model),
        "input_mode": meta["input_plan"]["mode"], "input_plan": meta["input_plan"],
        "cpu_threads": (result.history[-1] if result.history else {}).get("cpu_threads"),
        "monitor": monitor, "best_metric": result.best_metric,
        "best_epoch": result.best_epoch, "best_step": result.best_step, "epochs_run": result.epochs_run,
        "global_step": result.global_step,
        "total_steps": result.total_steps, "stopped_early": result.stopped_early, "stop_reason": result.stop_reason,
        "time_budget_estimates": result.budget_estimates,
        "already_finished": result.already_finished, "resumed_from_epoch": result.resumed_from_epoch,
        "best_checkpoint": str(store.best_path), "last_checkpoint": str(store.last_path),
        "parameters": count_parameters(plan.job.model), "labels": plan.labels.to_dict(),
        "manifest_hash": meta["manifest_hash"],
        "final": {k: v for k, v in (result.history[-1] if result.history else {}).items()},
        "best_values": best_values(history),
        "auto": meta.get("auto"),  # what each setting resolved to and why (ml/plan.py)
    }


def stage_rerun_target(stage_name: str, stage: StageParams, model: ModelParams, *, pipeline: str | None = None,
                       stage_key: str | None = None, all_pipeline: str = "training",
                       all_stage_keys: Sequence[str] = STAGES, input_mode_used: str | None = None
                       ) -> RerunTarget | None:
    """How the diagnosis's commands rerun stage ``stage_name``, and the settings (``stage``, ``model``) it has.

    A stage of ``STAGES`` reruns as ``kedro run --pipeline=<stage>`` with its own block; any other
    (a backbone-comparison candidate) needs ``pipeline`` and ``stage_key`` or gets no commands.
    """
    pipeline = pipeline or (stage_name if stage_name in STAGES else None)
    if pipeline is None:
        return None
    later = STAGES[STAGES.index(stage_name) + 1:] if stage_name in STAGES else ()
    return RerunTarget(pipeline, stage_key or stage_name, flatten(stage.model_dump(mode="json")),
                       flatten(model.model_dump(mode="json")), all_pipeline, tuple(all_stage_keys),
                       input_mode_used=input_mode_used, later_stages=tuple(later))


def rerun_target(plan: StagePlan, **how: Any) -> RerunTarget | None:
    """:func:`stage_rerun_target` of a planned stage (with the input mode it resolved to)."""
    return stage_rerun_target(plan.stage_name, plan.stage, plan.model,
                              input_mode_used=plan.job.meta["input_plan"]["mode"], **how)


def run_stage(plan: StagePlan, diagnosis: DiagnosisParams, *, rerun: RerunTarget | None = None) -> StageResult:
    """Train the planned stage and build its results; the diagnosis uses the stage's monitored metric.

    ``rerun``: how the diagnosis's commands run the stage again (default: :func:`rerun_target`).

    With ``trainer.devices x trainer.num_nodes > 1`` the training runs in worker processes launched
    by Lightning Fabric (:func:`defect_pipeline.ml.distributed.launch`); rank 0 writes the
    checkpoints, and the results are built here, in the calling process.
    """
    stage_name, store, tracker = plan.stage_name, plan.job.store, plan.job.training_logger
    result = launch(plan.settings, run_training_job, plan.job)
    if isinstance(tracker, PreviewingLogger):  # the stage's final preview; none when nothing trained
        if result.already_finished:
            tracker = tracker.inner
        else:  # several processes: this process's model did not train, rank 0's last checkpoint holds it
            tracker.finish(epoch=result.epochs_run, step=result.global_step,
                           weights=(lambda: store.load("last")["model"]) if plan.settings.world_size > 1 else None)
    if result.already_finished and tracker is not None:  # nothing trained: the logger still gets the curves
        tracker.log_steps(result.steps)
        for row in result.history:
            tracker.log_epoch(int(row["epoch"]), int(row["global_step"]), row)
    history = pd.DataFrame(result.history)
    monitor = f"val_{plan.stage.early_stopping.monitor}"
    summary = _summary(plan, result, history, monitor)
    steps = pd.DataFrame(result.steps)
    config = DiagnosisConfig.from_params(diagnosis, monitor=monitor, mode=plan.stage.early_stopping.mode)
    report = diagnose(history, config, steps=steps, stopped_early=result.stop_reason == "early_stopping",
                      target=rerun or rerun_target(plan))
    summary["diagnosis"] = [f"{f['severity']}: {f['kind']}" for f in report["findings"]]
    for finding in report["findings"]:
        if finding["severity"] != "info":
            command = next((a["command"] for a in finding["actions"] if "command" in a), None)
            logger.warning("%s diagnosis — %s: %s. %s%s", stage_name, finding["kind"], finding["message"],
                           finding["recommendation"], f". To apply: {command}" if command else "")
    curves = plot_training_curves(history, monitor=monitor, title=f"{stage_name}: {plan.model.backbone}")
    best_kind = "best" if store.has_best() else "last"
    package = ModelPackage.from_checkpoint(store.load(best_kind),
                                           source=str(store.best_path if best_kind == "best" else store.last_path))
    # what prediction will read (from the checkpoint: a stage that had already finished keeps how it was trained)
    summary["model_input"] = {k: package.meta[k] for k in ("input_mode", "input_scale", "image_size")
                              if k in package.meta}
    markdown = render_diagnosis_markdown(report, title=f"{stage_name} ({plan.model.backbone})")
    return StageResult(store, history, summary, curves, package, steps, report, markdown)


def join_stage(plan: StagePlan) -> None:
    """Run this node's ranks of a multi-node stage that node 0 trains; nothing is written or logged here."""
    if plan.settings.num_nodes < 2:
        raise ValueError(f"joining {plan.stage_name} needs trainer.num_nodes > 1 (got {plan.settings.num_nodes}); "
                         "pass the same --env/--params as node 0's kedro run")
    plan.job.training_logger = None
    launch(plan.settings, run_training_job, plan.job, joining=True)
