"""Parameter blocks of threshold tuning, evaluation, batch inference and ONNX export."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from defect_pipeline.config.base import Devices, StrictModel
from defect_pipeline.config.training import STAGES


def _each_flip_once(flips: list[str]) -> list[str]:
    if len(set(flips)) != len(flips):
        raise ValueError(f"tta lists a flip twice: {flips}")
    return flips


# test-time flips (thresholds, inference, ensemble): hflip / vflip, each at most once
Flips = Annotated[list[Literal["hflip", "vflip"]], AfterValidator(_each_flip_once)]


class ThresholdsParams(StrictModel):
    """Block ``thresholds``: which stage's model the steps after training use, and how its operating point is
    chosen on the validation split."""

    model_stage: str = Field("auto", description="the stage whose model is tuned and then evaluated, exported and "
                                                 "used for inference; auto = the stage that trained last")
    split: str = Field("val", description="manifest split the thresholds are tuned on")
    criterion: Literal["max_f1", "target_false_alarm_rate", "target_recall"] = "max_f1"
    target: float | None = Field(None, ge=0.0, le=1.0,
                                 description="the false-alarm rate or recall for the target_* criteria")
    pixel_metric: Literal["dice", "iou"] = "dice"
    min_area_candidates: list[int] = Field([0, 4, 8, 16, 32, 64, 128],
                                           description="minimum region sizes (pixels) to try; [] = keep every region")
    per_class: bool = Field(True, description="tune one threshold per defect class (kept only if it helps on val "
                                              "beyond chance: see signal_sigmas)")
    signal_sigmas: float = Field(
        2.0, ge=0.0, description="the image thresholds are tuned only when the image AUROC on the split exceeds 0.5 by "
                                 "this many standard deviations of a random scorer's AUROC on the same counts; "
                                 "otherwise the model has no signal and the fixed 0.5 is kept (0: any AUROC above "
                                 "0.5); per-class thresholds likewise need the val images they decide differently "
                                 "from the argmax to favour them by this many standard deviations (McNemar)")
    max_accuracy_drop: float = Field(
        0.02, ge=0.0, le=1.0, description="largest fall of the split's image accuracy (fixed 0.5 → tuned) that tuned "
                                          "image/per-class thresholds may cause; more, and the fixed ones are kept "
                                          "(1: no limit)")
    max_miou_drop: float = Field(
        0.02, ge=0.0, le=1.0, description="largest fall of the split's mIoU incl. background (fixed 0.5 / 0 px → "
                                          "tuned) that a tuned pixel threshold and min area may cause; more, and "
                                          "the fixed ones are kept (1: no limit)")
    tta: Flips = Field(
        [], description="test-time flips the operating point is tuned with; the tuned model package keeps them, "
                        "so evaluate, export checks, inference and the MLflow model predict the same way "
                        "(1 + len(tta) forward passes per image)")
    batch_size: int = Field(16, ge=1)
    num_workers: int = Field(0, ge=0)

    @field_validator("model_stage")
    @classmethod
    def _known_stage(cls, value: str) -> str:
        if value not in ("auto", *STAGES):
            raise ValueError(f"must be auto (the stage that trained last) or one of {', '.join(STAGES)}")
        return value

    @model_validator(mode="after")
    def _target_when_needed(self) -> ThresholdsParams:
        if self.criterion != "max_f1" and self.target is None:
            raise ValueError(f"criterion {self.criterion} needs 'target' (e.g. 0.05)")
        if any(a < 0 for a in self.min_area_candidates):
            raise ValueError("min_area_candidates must be >= 0")
        return self


class EvaluationParams(StrictModel):
    """Block ``evaluation``: the test-split evaluation."""

    split: str = "test"
    worst_k: int = Field(8, ge=0, le=64, description="images in the worst-predictions gallery")
    batch_size: int = Field(16, ge=1)
    num_workers: int = Field(0, ge=0)


class ThresholdOverrides(StrictModel):
    """Explicit thresholds that win over the model's tuned ones (and are recorded as such)."""

    image: float | None = Field(None, ge=0.0, le=1.0)
    pixel: float | None = Field(None, ge=0.0, le=1.0)
    min_area: int | None = Field(None, ge=0)


class InferenceParams(StrictModel):
    """Block ``inference``: batch prediction over a folder of images."""

    input_dir: str | None = Field(None, description="folder of images (searched recursively); "
                                                    "null in `kedro run`: the manifest's test split")
    limit: int | None = Field(None, ge=1, description="predict only the first N images of the listing (sorted by "
                                                      "path; the test split in manifest order); null = all")
    output_dir: str | None = Field(
        None, description="folder for predictions.csv, masks/, overlays/ and inference_summary.json; null: "
                          "data/07_model_output. Give it with --params inference.output_dir=<folder>: the catalog "
                          "reads it from there (a value set only in a parameters file is refused)")
    checkpoint: str | list[str] | None = Field(
        None, description="a model package folder, a best.pt/last.pt, an MLflow run id / runs:/ URI / "
                          "models:/<name>@<alias> (registry), a tuned ensemble.json, or a list of models averaged as "
                          "an untuned ensemble; null: the tuned model (data/06_models/tuned)")
    thresholds: ThresholdOverrides = ThresholdOverrides()
    backend: Literal["torch", "onnx"] = "torch"
    onnx_precision: Literal["fp32", "int8"] = Field(
        "fp32", description="backend onnx: model.onnx (fp32) or model.int8.onnx (export.quantize: int8)")
    onnx_provider: Literal["auto", "tensorrt", "cuda", "cpu"] = Field(
        "auto", description="backend onnx: onnxruntime execution provider; auto = TensorRT, CUDA or CPU, the best "
                            "available")
    batch_size: int = Field(16, ge=1)
    num_workers: int = Field(0, ge=0, description="processes that decode the images ahead of the model (0: the "
                                                  "predicting process reads them itself)")
    devices: Devices = Field(
        1, description="processes that share the images (one per GPU on CUDA, each with its own copy of the "
                       "model; rows merged in order into one predictions.csv); auto = every visible GPU (1 on CPU). "
                       "The device itself is trainer.accelerator / trainer.precision")
    write_masks: bool = True
    write_overlays: bool = True
    follow_symlinks: bool = Field(False, description="read symlinked files that point outside input_dir")
    tta: Flips | None = Field(
        None, description="test-time flips for a single model; null = the model package's (the thresholds.tta its "
                          "operating point was tuned with), [] = none (an ensemble.json brings its own)")
    tile_overlap: float = Field(0.25, ge=0.0, le=0.9,
                                description="models trained on crops (model.json input_mode: tile): how much "
                                            "neighbouring tiles overlap, as a fraction of the tile size")
    extensions: list[str] = [".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"]


class EnsembleParams(StrictModel):
    """Block ``ensemble``: several models averaged, and/or test-time flips (``kedro run --pipeline=ensemble``)."""

    members: list[str] = Field(
        [], description="model package folders, best.pt/last.pt files, MLflow run ids or runs:/ / models:/ URIs "
                        "(models:/<name>@<alias> for a registered version); "
                        "one member = test-time augmentation of a single model")
    weights: list[float] | None = Field(None, description="one per member (normalised); null = equal")
    tta: Flips = Field([], description="test-time flips, averaged back in mask space")
    batch_size: int = Field(16, ge=1)
    num_workers: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _weights_match(self) -> EnsembleParams:
        if self.weights is not None and len(self.weights) != len(self.members):
            raise ValueError(f"weights has {len(self.weights)} values for {len(self.members)} members")
        if self.weights is not None and (any(w < 0 for w in self.weights) or sum(self.weights) <= 0):
            raise ValueError("weights must be non-negative with a positive sum")
        return self


OnnxProvider = Literal["auto", "tensorrt", "cuda", "cpu"]


class ExportParams(StrictModel):
    """Block ``export``: ONNX export of the tuned model, optionally quantised to int8."""

    opset: int = Field(18, ge=13)
    parity_tolerance: float = Field(1e-3, gt=0.0, description="largest allowed |ONNX - PyTorch| of the logits")
    quantize: Literal["none", "int8"] = Field(
        "none", description="int8: also write model.int8.onnx (onnxruntime static quantisation calibrated on "
                            "calibration_split) with an fp32-vs-int8 parity report (mIoU, macro F1, images/s)")
    calibration_split: str = Field("val", description="manifest split the int8 model is calibrated and checked on")
    calibration_images: int = Field(64, ge=1, description="images of calibration_split used to calibrate int8")
    benchmark_batch_size: int = Field(8, ge=1, description="batch of the images/s measurement (and calibration)")
    int8_settings: list[str] = Field(
        ["per_channel", "per_tensor"], min_length=1,
        description="int8 recipes to try (ml/int8_settings.py: per_channel, per_tensor, reduce_range, qoperator, "
                    "s8s8, percentile, entropy); each is measured and the fastest within int8_max_miou_loss kept")
    int8_max_miou_loss: float = Field(0.01, ge=0.0, le=1.0,
                                      description="mIoU (a fraction) an int8 setting may lose against fp32 to be kept")
    provider: OnnxProvider = Field(
        "auto", description="onnxruntime execution provider the export is checked and timed on: auto (TensorRT, "
                            "CUDA or CPU, the best available) | tensorrt | cuda | cpu")
