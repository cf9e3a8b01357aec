"""int8 for CPUs: static quantisation of an exported ONNX model, calibrated on validation images, and
the parity check that says what it cost.

:func:`calibration_images` preprocesses the first images of a split exactly as prediction does (the
whole image resized; for a model trained on crops, the image's centre tile at its own scale), so
the activation ranges are those the model will see. :func:`quantize_int8` runs onnxruntime's
``quant_pre_process`` (graph optimisation + shape inference) and ``quantize_static`` in QDQ format
with per-channel int8 weights and uint8 activations (MinMax calibration), the format onnxruntime
turns into integer kernels on x86 (VNNI/AMX where present) and that TensorRT reads as int8.
:func:`int8_parity` evaluates the fp32 and the int8 model on the same split at the package's
operating point (mIoU, macro F1, combined score) and measures both models' network throughput
(images/s) on the same preprocessed batch, on the chosen execution provider; :func:`quantize_export`
does all three for the ``export`` pipeline (``export.quantize: int8``).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from defect_pipeline.ml.dataset import ManifestDataset
from defect_pipeline.ml.export import OnnxExport
from defect_pipeline.ml.int8_settings import (DEFAULT_INT8_SETTINGS, INT8_SETTINGS, Int8Setting, choose_int8_setting,
                                               resolve_int8_settings)
from defect_pipeline.ml.onnx_runner import INT8_ONNX_FILE, OnnxRunner
from defect_pipeline.ml.package import ModelPackage
from defect_pipeline.ml.predict import Predictor, as_rgb_uint8
from defect_pipeline.ml.tiling import pad_to_tile

logger = logging.getLogger(__name__)

PARITY_METRICS = ("miou", "miou_defects", "macro_f1", "accuracy", "combined_score")


def calibration_images(dataset: ManifestDataset, predictor: Predictor, limit: int) -> np.ndarray:
    """``(N, 3, S, S)`` float32: the first ``limit`` images of ``dataset`` as the network receives them."""
    if limit < 1:
        raise ValueError(f"the number of calibration images must be >= 1, got {limit}")
    count = min(int(limit), len(dataset))
    if count == 0:
        raise ValueError(f"the '{dataset.split}' split has no accepted image to calibrate the int8 model on")
    size = predictor.image_size
    rows = []
    for index in range(count):
        image = as_rgb_uint8(dataset.read_sample(index)[0])
        if predictor.input_mode == "tile":  # the centre tile, at the scale the model was trained on
            if predictor.input_scale != 1.0:
                height, width = image.shape[:2]
                image = cv2.resize(image, (max(1, round(width * predictor.input_scale)),
                                           max(1, round(height * predictor.input_scale))), interpolation=cv2.INTER_AREA)
            padded = pad_to_tile(image, size)
            top, left = (padded.shape[0] - size) // 2, (padded.shape[1] - size) // 2
            image = np.ascontiguousarray(padded[top:top + size, left:left + size])
        rows.append(predictor.preprocess(image))  # resize (a no-op for a tile) and normalise
    return torch.stack(rows).numpy().astype(np.float32)


def quantize_int8(fp32_model: bytes, calibration: np.ndarray, *, batch_size: int = 8,
                  setting: Int8Setting = INT8_SETTINGS["per_channel"]) -> bytes:
    """The int8 version of ``fp32_model`` by ``setting`` (default: QDQ, per-channel int8 weights, uint8
    activations, MinMax), calibrated on ``calibration``."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class _Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([{"image": calibration[i:i + batch_size]}
                                  for i in range(0, len(calibration), batch_size)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    with tempfile.TemporaryDirectory() as scratch:
        source, prepared, target = (Path(scratch) / name for name in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        source.write_bytes(fp32_model)
        # symbolic shape inference does not follow torch.export's dynamic batch; ONNX's own inference does
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(target), _Batches(), **setting.quantize_static_options())
        return target.read_bytes()


def throughput(runner: OnnxRunner, images: np.ndarray, *, batch_size: int, repeats: int = 3) -> float:
    """Network images/s of ``runner`` over ``images`` in batches (one warm-up pass, then the best of ``repeats``)."""
    return throughputs({"model": runner}, images, batch_size=batch_size, repeats=repeats)["model"]["images_per_s"]


def throughputs(runners: dict[str, OnnxRunner], images: np.ndarray, *, batch_size: int,
                repeats: int = 3, single_thread: bool = False) -> dict[str, dict[str, float | None]]:
    """Network images/s of each runner over ``images``, the runners' passes interleaved (one warm-up pass each,
    then the best of ``repeats``), so load from other processes falls on all of them alike.

    ``images_per_s`` is wall-clock; ``images_per_cpu_s`` the images per second of this thread's CPU time, which
    other processes on the same core do not inflate: the throughput of one core, given only when
    ``single_thread`` (CPU sessions made with ``threads=1`` compute on the calling thread), else ``None``.
    """
    batches = [torch.from_numpy(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    wall = dict.fromkeys(runners, float("inf"))
    cpu = dict.fromkeys(runners, float("inf"))
    for attempt in range(repeats + 1):
        for name, runner in runners.items():
            started, cpu_started = time.perf_counter(), time.thread_time()
            for batch in batches:
                runner(batch)
            if attempt:  # the first pass warms up (memory arenas, kernel choice)
                wall[name] = min(wall[name], time.perf_counter() - started)
                cpu[name] = min(cpu[name], time.thread_time() - cpu_started)
    return {name: {"images_per_s": round(len(images) / wall[name], 2),
                   "images_per_cpu_s": round(len(images) / cpu[name], 2) if single_thread and cpu[name] > 0 else None}
            for name in runners}


def int8_parity(package: ModelPackage, dataset: ManifestDataset, *, fp32_model: bytes,
                int8_models: dict[str, bytes], calibration: np.ndarray, provider: str = "auto",
                threads: int | None = None, batch_size: int = 8, max_miou_loss: float = 0.01,
                evaluate: Any = None) -> dict[str, Any]:
    """fp32 vs each int8 model of ``int8_models`` (setting name → model) on ``dataset`` at the package's
    thresholds, all models' images/s on ``provider`` (passes interleaved), and the setting kept.

    The kept setting is :func:`~defect_pipeline.ml.int8_settings.choose_int8_setting`'s choice (the fastest
    within ``max_miou_loss`` of fp32's mIoU, else the most accurate); its figures are the report's ``int8``,
    ``difference_int8_minus_fp32`` and ``speedup``, every setting's are under ``settings``. Speeds are
    compared by CPU time when ``threads == 1`` on the CPU (other processes on the core do not bias it), else
    by wall clock. ``evaluate(dataset, predictor) -> metrics`` defaults to
    :func:`~defect_pipeline.ml.evaluation.evaluate_split`'s thresholded metrics.
    """
    if evaluate is None:
        from defect_pipeline.ml.evaluation import evaluate_split

        def evaluate(split: ManifestDataset, predictor: Predictor) -> dict[str, Any]:
            result = evaluate_split(split, predictor, tuned=package.thresholds, worst_k=0, batch_size=batch_size)
            return result.summary["final_metrics_thresholded"]

    models = {"fp32": fp32_model, **int8_models}
    runners = {name: OnnxRunner.from_model(model, provider=provider, threads=threads) for name, model in models.items()}
    single_thread = threads == 1 and all(r.providers[0] == "CPUExecutionProvider" for r in runners.values())
    speeds = throughputs(runners, calibration, batch_size=batch_size, single_thread=single_thread)
    results: dict[str, dict[str, Any]] = {}
    for name, runner in runners.items():
        metrics = evaluate(dataset, Predictor(package, backend="onnx", runner=runner))
        results[name] = {**{key: round(float(metrics[key]), 4) for key in PARITY_METRICS if key in metrics},
                         **speeds[name], "providers": runner.providers, "size_mb": round(len(models[name]) / 2**20, 2)}
    fp32 = results.pop("fp32")
    speed_key = "images_per_cpu_s" if single_thread else "images_per_s"
    for name, result in results.items():
        result["difference_int8_minus_fp32"] = {key: round(result[key] - fp32[key], 4)
                                                for key in PARITY_METRICS if key in fp32}
        result["speedup"] = round(result["images_per_s"] / fp32["images_per_s"], 2)
        result["speedup_cpu"] = (round(result["images_per_cpu_s"] / fp32["images_per_cpu_s"], 2)
                                 if single_thread else None)
    chosen, why = choose_int8_setting(
        {name: {"speedup": r[speed_key] / fp32[speed_key], "miou_loss": fp32.get("miou", 0.0) - r.get("miou", 0.0)}
         for name, r in results.items()}, max_miou_loss=max_miou_loss)
    int8 = results[chosen]
    report = {
        "split": dataset.split, "samples": len(dataset), "calibration_images": len(calibration),
        "thresholds": package.thresholds.to_dict(), "fp32": fp32, "int8": int8, "setting": chosen, "choice": why,
        "settings": results, "difference_int8_minus_fp32": int8["difference_int8_minus_fp32"],
        "speedup": int8["speedup_cpu"] if single_thread else int8["speedup"],
        "throughput": (f"network only, batch {batch_size}, the {len(calibration)} calibration images, "
                       f"{threads or 'onnxruntime default'} thread(s), the models' passes interleaved, best of 3"
                       + ("; images/s of CPU time (one core)" if single_thread else "; wall clock")),
    }
    logger.info("int8 (%s, %s) on %d '%s' images: mIoU %.4f → %.4f, macro F1 %.4f → %.4f, %.2f× fp32's images/s",
                chosen, why, len(dataset), dataset.split, fp32.get("miou", 0.0), int8.get("miou", 0.0),
                fp32.get("macro_f1", 0.0), int8.get("macro_f1", 0.0), report["speedup"] or 0.0)
    return report


def quantize_export(exported: OnnxExport, package: ModelPackage, dataset: ManifestDataset, *,
                    calibration_limit: int = 64, provider: str = "auto", threads: int | None = None,
                    batch_size: int = 8, settings: Sequence[str] = DEFAULT_INT8_SETTINGS,
                    max_miou_loss: float = 0.01) -> OnnxExport:
    """``exported`` with its int8 model added (each of ``settings`` tried, calibrated on ``dataset``, the one
    :func:`int8_parity` keeps) and the parity report under ``"int8"``."""
    recipes = resolve_int8_settings(settings)
    predictor = Predictor(package, backend="onnx", runner=OnnxRunner.from_model(exported.model, provider="cpu"))
    calibration = calibration_images(dataset, predictor, calibration_limit)
    int8_models, seconds = {}, {}
    for recipe in recipes:
        started = time.perf_counter()
        int8_models[recipe.name] = quantize_int8(exported.model, calibration, batch_size=batch_size, setting=recipe)
        seconds[recipe.name] = round(time.perf_counter() - started, 2)
    parity = int8_parity(package, dataset, fp32_model=exported.model, int8_models=int8_models,
                         calibration=calibration, provider=provider, threads=threads, batch_size=batch_size,
                         max_miou_loss=max_miou_loss)
    for recipe in recipes:
        parity["settings"][recipe.name].update(method=recipe.describe(), quantize_seconds=seconds[recipe.name])
    chosen = parity["setting"]
    where = package.folder / INT8_ONNX_FILE if package.folder is not None else INT8_ONNX_FILE
    int8 = {"file": str(where), "method": INT8_SETTINGS[chosen].describe(), "quantize_seconds": seconds[chosen],
            "max_miou_loss": max_miou_loss, **parity}
    return OnnxExport(exported.model, {**exported.report, "int8": int8}, int8_models[chosen])
