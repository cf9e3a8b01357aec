"""Nodes of the ``inference`` pipeline (the work is in :mod:`defect_pipeline.ml.inference`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from defect_pipeline.config import EvaluationParams, InferenceParams, RuntimeParams, TrainerParams
from defect_pipeline.ml import inference
from defect_pipeline.ml.device import PredictionDevice, resolve_prediction_device
from defect_pipeline.ml.distributed import TrainerSettings
from defect_pipeline.ml.model_use import (
    apply_runtime,
    load_member,
    model_description,
    predictor_from_ensemble_spec,
    variant_predictor,
)
from defect_pipeline.ml.onnx_runner import choose_providers
from defect_pipeline.ml.package import ModelPackage, ModelStore
from defect_pipeline.ml.postprocess import Thresholds
from defect_pipeline.ml.predict import Predictor
from defect_pipeline.ml.sharded_inference import predict_files_sharded
from defect_pipeline.tracking.pyfunc import load_logged_package
from defect_pipeline.util import names_same_place

logger = logging.getLogger(__name__)


def list_input_images(params: InferenceParams) -> dict[str, Any]:
    """The image files of ``inference.input_dir`` (and the files ignored there)."""
    if params.input_dir is None:
        raise ValueError("inference.input_dir is not set: run `kedro run --pipeline=inference --params "
                         "inference.input_dir=/path/to/images` (the default `kedro run` predicts the test split)")
    files, ignored = inference.list_images(params.input_dir, extensions=params.extensions,
                                           follow_symlinks=params.follow_symlinks)
    logger.info("inference: %d image file(s) in %s (%d other file(s) ignored)", len(files), params.input_dir,
                len(ignored))
    return {"files": files, "ignored": ignored, "input": str(params.input_dir)}


def test_split_images(manifest: pd.DataFrame, raw_source: dict[str, Any], evaluation: EvaluationParams
                      ) -> dict[str, Any]:
    """The accepted images of the evaluation split, as inference input (the default ``kedro run``)."""
    split = evaluation.split
    rows = manifest[(manifest["split"] == split) & (manifest["status"] == "accepted")]
    root = Path(raw_source["raw_root"])
    files = pd.DataFrame({"path": [str(root / p) for p in rows["image_path"]],
                          "relative_path": [str(p) for p in rows["image_path"]],
                          "status": "pending", "error": ""})
    return {"files": files, "ignored": [], "input": f"manifest split '{split}' under {root}"}


def _thresholds_of(tuned: Thresholds, cfg: InferenceParams) -> tuple[Thresholds, str]:
    overrides = {k: v for k, v in cfg.thresholds.model_dump().items() if v is not None}
    if not overrides:
        return tuned, tuned.source
    source = f"{tuned.source}; overridden by inference.thresholds {overrides}"
    return tuned.replace(**overrides, source=source), source


def _settings(cfg: InferenceParams, where: PredictionDevice) -> TrainerSettings:
    """The processes of ``inference.devices`` on the device of ``where``."""
    visible = torch.cuda.device_count() if where.device == "cuda" else None
    devices = (visible or 1) if cfg.devices == "auto" else int(cfg.devices)
    if visible is not None and devices > visible:
        raise ValueError(f"inference.devices is {devices} but only {visible} GPU(s) are visible; lower "
                         "inference.devices or set CUDA_VISIBLE_DEVICES")
    return TrainerSettings(accelerator=where.device, devices=devices, num_nodes=1,
                           strategy="ddp" if devices > 1 else "single", precision=where.precision)


def _predictor(model: ModelStore, cfg: InferenceParams, runtime: RuntimeParams
               ) -> tuple[Any, Thresholds, str, dict[str, Any]]:
    """The predictor ``inference.checkpoint`` names (on the CPU: :func:`predict_files_sharded` puts it on each
    process's device), its thresholds, where they come from, and its description."""
    if isinstance(cfg.checkpoint, list):  # an ad-hoc ensemble: equal weights, thresholds not tuned for it
        if cfg.backend != "torch":
            raise ValueError("a list of models in inference.checkpoint runs with inference.backend: torch")
        packages = [load_member(ref, load_logged=load_logged_package) for ref in cfg.checkpoint]
        untuned = Thresholds(source="default: 0.5 / 0.5 / 0 px (ensemble given as a list, not tuned; "
                                    "kedro run --pipeline=ensemble tunes one)")
        thresholds, source = _thresholds_of(untuned, cfg)
        predictor = variant_predictor(packages, list(cfg.checkpoint), [1.0] * len(packages),
                                      {"members": list(range(len(packages))), "tta": cfg.tta or []}, thresholds,
                                      tile_overlap=cfg.tile_overlap)
        return predictor, thresholds, source, {"members": list(cfg.checkpoint), "tta": list(cfg.tta or [])}
    if cfg.checkpoint and cfg.checkpoint.endswith(".json"):  # a tuned ensemble (kedro run --pipeline=ensemble)
        if cfg.backend != "torch" or cfg.tta:
            raise ValueError("an ensemble.json runs with inference.backend: torch and brings its own test-time flips; "
                             "leave inference.tta empty")
        spec = json.loads(Path(cfg.checkpoint).read_text())
        predictor = predictor_from_ensemble_spec(spec, load_logged=load_logged_package, tile_overlap=cfg.tile_overlap)
        thresholds, source = _thresholds_of(predictor.thresholds, cfg)
        predictor.thresholds = thresholds
        description = {"ensemble": cfg.checkpoint, "variant": spec["final_variant"],
                       "members": [m["ref"] for m in spec["members"]], "weights": spec["weights"],
                       "tta": spec["variants"][spec["final_variant"]]["tta"]}
        return predictor, thresholds, source, description
    package = load_member(cfg.checkpoint, load_logged=load_logged_package) if cfg.checkpoint else model.load()
    thresholds, source = _thresholds_of(package.thresholds, cfg)
    predictor = Predictor(package, thresholds=thresholds, backend=cfg.backend, tta=cfg.tta,
                          onnx_threads=runtime.onnx_threads, tile_overlap=cfg.tile_overlap,
                          onnx_precision=cfg.onnx_precision, onnx_provider=cfg.onnx_provider)
    description = {**model_description(package), "tta": list(predictor.tta)}
    if cfg.backend == "onnx":
        description.update(onnx_precision=cfg.onnx_precision, onnx_providers=predictor.onnx_providers)
    if predictor.input_mode == "tile":
        description["tile_overlap"] = cfg.tile_overlap
    return predictor, thresholds, source, description


def _check_output_dir(params: InferenceParams, output_dir: str | None) -> None:
    """``inference.output_dir`` must be where the catalog writes (it reads the value given with ``--params``)."""
    if output_dir is not None and params.output_dir is not None and not names_same_place(params.output_dir,
                                                                                          output_dir):
        raise ValueError(f"inference.output_dir is {params.output_dir} but the catalog writes the predictions to "
                         f"{output_dir}: give the folder with --params inference.output_dir=<folder> (the catalog "
                         "reads it from there), or point the inference entries at it in conf/local/catalog.yml")


def predict(inputs: dict[str, Any], model: ModelStore, params: InferenceParams, runtime: RuntimeParams,
            output_dir: str | None = None, trainer: TrainerParams = TrainerParams()
            ) -> tuple[pd.DataFrame, dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``predictions.csv``, mask PNGs, overlay images and ``inference_summary.json`` for the first
    ``inference.limit`` images of ``inputs``; ``output_dir``: where the catalog writes them (its
    ``inference_output_dir``), recorded in the summary. The model runs on the device of ``trainer.accelerator``
    / ``trainer.precision`` in ``inference.devices`` processes (the summary's ``device``)."""
    output_dir = None if output_dir is None else str(output_dir)
    _check_output_dir(params, output_dir)
    apply_runtime(runtime.cpu_threads)
    where = resolve_prediction_device(trainer.accelerator, trainer.precision)
    settings = _settings(params, where)
    predictor, thresholds, source, description = _predictor(model, params, runtime)
    if source.startswith("default"):
        logger.warning("inference uses untuned default thresholds (%s); run the thresholds pipeline, or set "
                       "inference.thresholds", source)
    files = inference.first_images(inputs["files"], params.limit)
    if len(files) < len(inputs["files"]):
        logger.info("inference.limit %d: predicting the first %d of %d listed images", params.limit, len(files),
                    len(inputs["files"]))
    result = predict_files_sharded(files, predictor, settings=settings, batch_size=params.batch_size,
                                   num_workers=params.num_workers, cpu_threads=runtime.cpu_threads)
    frame = result.predictions
    frame["thresholds"] = source
    by_name = dict(zip(frame["mask_file"].fillna(""), frame["path"], strict=True)) if "mask_file" in frame else {}
    masks = {name: inference.lazy_mask(png) for name, png in result.masks.items()} if params.write_masks else {}
    overlays = ({name: inference.lazy_overlay(by_name[f"{name}.png"], png) for name, png in result.masks.items()}
                if params.write_overlays else {})
    summary = inference.summary(result, thresholds=thresholds.to_dict(), thresholds_source=source,
                                model=description, backend=params.backend,
                                input_description=inputs["input"], ignored=inputs["ignored"],
                                listed=len(inputs["files"]), limit=params.limit, output_dir=output_dir)
    summary["device"] = {**where.describe(), "processes": settings.world_size}
    if params.backend == "onnx":
        import onnxruntime

        summary["device"]["onnx_providers"] = choose_providers(where.device, onnxruntime.get_available_providers())[0]
    logger.info("inference: %s in %.1f s (%.1f images/s, %s on %s, %s, %d process(es))", summary["status"],
                result.seconds, result.images_per_s, params.backend, where.device, where.precision,
                settings.world_size)
    return frame, masks, overlays, summary
