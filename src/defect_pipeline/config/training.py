"""Parameters of model building, augmentation and the training stages.

Blocks: ``model`` (shared by every stage: backbone, decoder, input size and input mode — whole
images resized or crops —), ``augmentation``
(the albumentations recipe and its preview) and one :class:`StageParams` block per stage
(``stage1``, ``stage2``, ``stage3``): optimisation, loss weighting, schedules, early stopping,
step-level control (length, validation and checkpoints every N steps) and where the stage starts
from (``init_from``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, PlainValidator, ValidationInfo, field_validator, model_validator

from defect_pipeline.config.adapters import AdapterParams
from defect_pipeline.config.base import Devices, StrictModel

STAGES = ("stage1", "stage2", "stage3")  # the training stages, in order: one StageParams block each


def _auto_or_whole(minimum: int, maximum: int | None = None) -> PlainValidator:
    """``auto`` (chosen from the data and the machine when a stage starts: ml/plan.py, docs/training.md) or a
    whole number within the bounds, with one error message naming both."""
    def check(value: Any) -> int | str:
        if value == "auto":
            return value
        try:
            number = int(value)
            whole = not isinstance(value, bool) and float(value) == number
        except (TypeError, ValueError):
            whole = False
        if not whole or number < minimum or (maximum is not None and number > maximum):
            bound = f"from {minimum} to {maximum}" if maximum is not None else f"of at least {minimum}"
            raise ValueError(f"must be 'auto' or a whole number {bound}")
        return number
    return PlainValidator(check)




class CropParams(StrictModel):
    """Block ``model.crop``: how training crops are taken when the input mode is ``crop``.

    ``scale`` rescales the image before cropping (1.0 = native pixels; 0.5 = each crop of
    ``image_size`` px covers ``2 x image_size`` native px); the model then expects images at that
    scale (its package records ``input_scale``). ``defect_rate`` is the probability that a training
    crop is placed on a random defect pixel of the mask (defect-aware sampling) instead of
    uniformly over the image; validation crops follow the same rule with a fixed seed per sample.
    """

    scale: float = Field(1.0, gt=0.0, le=4.0, description="image rescale before cropping (1.0 = native)")
    defect_rate: float = Field(0.5, ge=0.0, le=1.0, description="share of crops placed on a defect pixel")


class ModelParams(StrictModel):
    """Block ``model``: the network every stage trains, and what its input is.

    ``input_mode``: ``resize`` squashes each whole image to ``image_size x image_size``; ``crop``
    trains on ``image_size x image_size`` crops at the ``crop.scale`` of the image (for large images
    with small defects; prediction then slides a window over the image); ``auto`` chooses from the
    image and defect sizes in the manifest (docs/training.md). ``image_size: auto`` is chosen from
    the median image size when a stage starts (docs/training.md, "Settings chosen from the data").
    """

    backbone: str = "convnext_atto"
    decoder: Literal["auto", "fpn", "unet", "dpt", "sfp"] = "auto"
    decoder_channels: int = Field(64, ge=8)
    pretrained: bool = False
    checkpoint_path: str | None = Field(None, description="local backbone weights (.safetensors or state dict)")
    seg_mode: Literal["multiclass", "binary"] = "multiclass"
    image_size: Annotated[int | Literal["auto"], _auto_or_whole(16, 4096)] = Field(
        96, description="network input side: the resized image or the crop; auto = from the median image size")
    input_mode: Literal["auto", "resize", "crop"] = Field(
        "auto", description="auto: crop for images much larger than image_size or with tiny defects, else resize")
    crop: CropParams = CropParams()

    @field_validator("input_mode", mode="before")
    @classmethod
    def _tile_is_a_package_word(cls, value: Any) -> Any:
        if isinstance(value, str) and value.lower() in ("tile", "tiles", "tiling", "sliding_window", "patch"):
            raise ValueError(f"{value!r} is not a training input mode: set 'crop' to train on crops (the model "
                             "package then records input_mode 'tile' and prediction slides a window), 'resize' "
                             "for whole resized images, or 'auto'")
        return value


class RuntimeParams(StrictModel):
    """Block ``runtime``: machine-level settings shared by every stage."""

    cpu_threads: int | None = Field(
        None, ge=1, description="torch intra-op threads on CPU; null = torch's default (one per core)"
    )
    onnx_threads: int | None = Field(
        None, ge=1, description="onnxruntime intra-op threads (inference.backend: onnx); null = its default "
                                "(one per physical core)"
    )


class TrainerParams(StrictModel):
    """Block ``trainer``: where and how every stage trains (Lightning Fabric for more than one process).

    ``devices`` is the number of processes per node (GPUs on ``cuda``, CPU processes with the
    gloo backend on ``cpu``); ``num_nodes`` x ``devices`` processes train together, each on
    ``stage.batch_size`` samples per step, so one optimizer step sees
    ``batch_size x devices x num_nodes x accumulate_grad_batches`` samples (see docs/distributed.md).
    """

    accelerator: Literal["auto", "cpu", "cuda", "gpu"] = "auto"
    devices: Devices = Field(1, description="processes per node; auto = every visible GPU (1 on CPU)")
    strategy: Literal["auto", "ddp"] = Field(
        "auto", description="auto = ddp when more than one process trains, else a single process")
    num_nodes: int = Field(1, ge=1)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16/fp16 on GPUs, bf16 on CPUs only where measured faster, else fp32")
    channels_last: bool | Literal["auto"] = Field(
        False, description="train in channels_last memory format; auto = on for ConvNeXt only (measured +27 % for "
                           "convnext_atto, -13 % for efficientnet_b0 on a CPU)")
    compile: bool = Field(False, description="torch.compile the network (falls back to eager, saying why, where "
                                             "it cannot compile)")

    @field_validator("strategy", mode="before")
    @classmethod
    def _explain_fsdp(cls, value: Any) -> Any:
        if isinstance(value, str) and value.lower().startswith(("fsdp", "deepspeed")):
            raise ValueError(
                f"{value!r} is not offered: it shards the weights for models that do not fit one device, and "
                "the largest supported backbone (DINOv2-L, 0.3 B parameters) trains under ddp on any 16 GB GPU. "
                "Use ddp (or auto)")
        return value


class AugmentationParams(StrictModel):
    """Block ``augmentation``: the training transforms (albumentations) and the preview."""

    recipe: list[dict[str, Any]] = [{"name": "HorizontalFlip", "p": 0.5}]
    preview_samples: int = Field(4, ge=1, le=32)
    preview_views: int = Field(4, ge=1, le=16)
    seed: int = 0


class LossParams(StrictModel):
    """How the classification and segmentation losses are combined.

    ``dynamic`` ramps the weights linearly over the stage's optimizer steps; the defaults are the
    recipe's direction: segmentation first (``beta`` 1.0 → 0.3), classification later (``alpha``
    0.5 → 1.0). Any stage may use any weighting.
    """

    weighting: Literal["fixed", "dynamic", "uncertainty"] = "fixed"
    alpha: float = Field(1.0, ge=0.0, description="classification weight (fixed)")
    beta: float = Field(1.0, ge=0.0, description="segmentation weight (fixed)")
    alpha_start: float = Field(0.5, ge=0.0, description="classification weight at the stage's first step (dynamic)")
    alpha_end: float = Field(1.0, ge=0.0, description="classification weight at its last step (dynamic)")
    beta_start: float = Field(1.0, ge=0.0, description="segmentation weight at the stage's first step (dynamic)")
    beta_end: float = Field(0.3, ge=0.0, description="segmentation weight at its last step (dynamic)")
    ce_weight: float = Field(1.0, ge=0.0, description="segmentation CE/BCE term")
    dice_weight: float = Field(1.0, ge=0.0, description="segmentation Dice term")
    class_weights: Literal["auto", "none", "balanced", "sqrt"] | list[float] = Field(
        "auto", description="auto = sqrt (1/sqrt(class count)) for imbalanced classes unless the sampler is balanced")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)


class DropoutParams(StrictModel):
    """Progressive dropout: 0 until ``warmup_step``, then ``rate`` in every dropout layer."""

    rate: float = Field(0.0, ge=0.0, lt=1.0)
    warmup_step: int = Field(0, ge=0)


class EarlyStoppingParams(StrictModel):
    """Stop when the monitored validation metric has not improved for ``patience`` validations (epochs,
    unless the stage sets ``val_every_n_steps``)."""

    monitor: str = "combined_score"
    mode: Literal["max", "min"] = "max"
    patience: int = Field(5, ge=1)
    min_delta: float = Field(0.0, ge=0.0)


class EmaParams(StrictModel):
    """Block ``stageN.ema``: validate, checkpoint and package an exponential moving average of the weights.

    After every optimizer step the average moves ``1 - decay`` of the way towards the weights; its window
    (``1 / (1 - decay)`` steps) grows linearly from one step to its full length over ``warmup_steps``
    (null: ten windows). ``best``/``last``, early stopping and the stage's model package then use the
    average (docs/training.md, "EMA of the weights").
    """

    enabled: bool = False
    decay: float = Field(0.999, ge=0.0, lt=1.0, description="the average's decay per optimizer step")
    warmup_steps: int | None = Field(None, ge=0, description="steps over which the averaging window grows to "
                                                              "1 / (1 - decay); null = 10 / (1 - decay)")


class StageParams(StrictModel):
    """Blocks ``stage1``/``stage2``/``stage3``: one training stage.

    Step-level control (docs/training.md, "Step-level control"): ``max_steps`` sets the length in
    optimizer steps instead of ``epochs``; ``val_every_n_steps`` validates (history row, early
    stopping, ``best``/``last``) every N steps instead of once per epoch;
    ``checkpoint_every_n_steps`` writes numbered ``step_<N>.pt`` files, the newest ``keep_last_n`` kept.
    ``epochs``, ``batch_size``, ``sampler`` and ``loss.class_weights`` may be ``auto``: chosen from the
    data and the machine when the stage starts (docs/training.md, "Settings chosen from the data").
    """

    init_from: str = Field("scratch", description="scratch | stage1 | stage2 | path to a checkpoint file")
    freeze_backbone: bool = False
    epochs: Annotated[int | Literal["auto"], _auto_or_whole(1)] = Field(
        3, description="auto = from a target number of optimizer steps; with time_budget_s: as long as the budget, "
                       "the LR and loss-weight schedules spanning it")
    batch_size: Annotated[int | Literal["auto"], _auto_or_whole(1)] = Field(
        16, description="per process; auto = from the data size, the device and its memory")
    sampler: Literal["auto", "uniform", "balanced"] = Field(
        "auto", description="training image order: uniform shuffle, or balanced (probability 1/sqrt(class count)); "
                            "auto = balanced for imbalanced image classes")
    accumulate_grad_batches: int = Field(1, ge=1)
    lr: float = Field(1e-3, gt=0.0, description="learning rate of the decoder and heads")
    backbone_lr: float | None = Field(None, gt=0.0, description="null = lr")
    weight_decay: float = Field(0.01, ge=0.0)
    warmup_epochs: float = Field(0.0, ge=0.0)
    warmup_lr_ratio: float = Field(0.1, gt=0.0, le=1.0, description="warmup starts at lr * ratio")
    eta_min_ratio: float = Field(0.01, ge=0.0, le=1.0, description="cosine (and each restart cycle) ends at lr * ratio")
    scheduler: Literal["cosine", "cosine_restarts", "step", "constant"] = Field(
        "cosine", description="LR shape after the warmup (docs/training.md, 'Learning-rate schedules')")
    restart_epochs: float | None = Field(None, gt=0.0, description="cosine_restarts: the first cycle's length")
    restart_mult: float = Field(1.0, ge=1.0, description="cosine_restarts: each cycle this many times the last")
    step_epochs: float | None = Field(None, gt=0.0, description="step: epochs between two decays")
    step_gamma: float = Field(0.1, gt=0.0, lt=1.0, description="step: the factor applied at each decay")
    grad_clip: float | None = Field(1.0, gt=0.0)
    seed: int = 42
    num_workers: int = Field(0, ge=0)
    max_batches_per_epoch: int | None = Field(None, ge=1, description="cap for smoke tests")
    max_steps: int | None = Field(None, ge=1, description="the stage's length in optimizer steps, instead of "
                                                          "epochs (the LR and loss-weight schedules span it)")
    val_every_n_steps: int | None = Field(None, ge=1, description="validate every N optimizer steps (and after "
                                                                  "the last); null = once per epoch")
    checkpoint_every_n_steps: int | None = Field(None, ge=1, description="write step_<N>.pt every N optimizer "
                                                                         "steps, besides best.pt and last.pt")
    keep_last_n: int | None = Field(3, ge=1, description="step_<N>.pt files kept (the oldest removed); null = all")
    resume: bool = True
    loss: LossParams = LossParams()
    dropout: DropoutParams = DropoutParams()
    early_stopping: EarlyStoppingParams = EarlyStoppingParams()
    ema: EmaParams = EmaParams()
    adapter: AdapterParams = AdapterParams()  # LoRA on ViT backbones (config/adapters.py)
    time_budget_s: float | None = Field(None, gt=0, description="stop after the epoch that reaches this many "
                                                                "seconds of training (null: no limit); with "
                                                                "epochs: auto, the stage's length")
    preview_every_n_epochs: int = Field(
        5, ge=0, description="draw the model's predictions on a fixed handful of validation images every N epochs "
                             "and when the stage ends (data/08_reporting/<stage>/val_preview_epoch<N>.png, "
                             "an MLflow artifact of the stage run); 0 = off")

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, values: Any) -> Any:
        if isinstance(values, dict):
            for key, new in (("precision", "trainer.precision"), ("device", "trainer.accelerator")):
                if key in values:
                    raise ValueError(f"{key!r} moved to the shared trainer block: set {new} instead "
                                     "(every stage and process uses the same one)")
        return values

    @field_validator("keep_last_n")
    @classmethod
    def _keep_needs_step_checkpoints(cls, value: int | None, info: ValidationInfo) -> int | None:
        if info.data.get("checkpoint_every_n_steps", 0) is None:
            raise ValueError("keep_last_n applies to step checkpoints only, but checkpoint_every_n_steps is not "
                             "set: set checkpoint_every_n_steps (e.g. 500), or remove keep_last_n")
        return value

    @model_validator(mode="after")
    def _schedule_settings_fit(self) -> StageParams:
        needed = {"cosine_restarts": ("restart_epochs", "the first cycle's length in epochs, e.g. 5"),
                  "step": ("step_epochs", "the epochs between two decays, e.g. 10")}
        if self.scheduler in needed and getattr(self, needed[self.scheduler][0]) is None:
            key, what = needed[self.scheduler]
            raise ValueError(f"scheduler: {self.scheduler} needs {key} ({what})")
        owners = {"restart_epochs": "cosine_restarts", "restart_mult": "cosine_restarts", "step_epochs": "step",
                  "step_gamma": "step"}
        for key, owner in owners.items():
            value = getattr(self, key)
            if owner != self.scheduler and value is not None and value != type(self).model_fields[key].default:
                raise ValueError(f"{key} applies to scheduler: {owner} only, but scheduler is {self.scheduler}: set "
                                 f"scheduler: {owner}, or remove {key}")
        return self

    @model_validator(mode="after")
    def _init_is_known(self) -> StageParams:
        known = {"scratch", *STAGES}
        if self.init_from not in known and not self.init_from.endswith((".pt", ".pth", ".safetensors")):
            raise ValueError(
                f"init_from must be one of {sorted(known)} or a checkpoint file path (.pt/.pth/.safetensors); "
                f"got {self.init_from!r}"
            )
        return self
