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
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from defect_pipeline.ml.dataset import ManifestDataset
from defect_pipeline.ml.export import OnnxExport
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


def quantize_int8(fp32_model: bytes, calibration: np.ndarray, *, batch_size: int = 8) -> bytes:
    """The int8 (QDQ, per-channel weights, uint8 activations) version of ``fp32_model``, calibrated on ``calibration``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
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
        quantize_static(str(prepared), str(target), _Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        return target.read_bytes()


def throughput(runner: OnnxRunner, images: np.ndarray, *, batch_size: int, repeats: int = 3) -> float:
    """Network images/s of ``runner`` over ``images`` in batches (one warm-up pass, then the best of ``repeats``)."""
    batches = [torch.from_numpy(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    best = float("inf")
    for attempt in range(repeats + 1):
        started = time.perf_counter()
        for batch in batches:
            runner(batch)
        if attempt:  # the first pass warms up (memory arenas, kernel choice)
            best = min(best, time.perf_counter() - started)
    return len(images) / best


def int8_parity(package: ModelPackage, dataset: ManifestDataset, *, fp32_model: bytes, int8_model: bytes,
                calibration: np.ndarray, provider: str = "auto", threads: int | None = None, batch_size: int = 8,
                evaluate: Any = None) -> dict[str, Any]:
    """fp32 vs int8 on ``dataset`` at the package's thresholds, and both models' images/s on ``provider``.

    ``evaluate(dataset, predictor) -> metrics`` defaults to
    :func:`~defect_pipeline.ml.evaluation.evaluate_split`'s thresholded metrics.
    """
    if evaluate is None:
        from defect_pipeline.ml.evaluation import evaluate_split

        def evaluate(split: ManifestDataset, predictor: Predictor) -> dict[str, Any]:
            result = evaluate_split(split, predictor, tuned=package.thresholds, worst_k=0, batch_size=batch_size)
            return result.summary["final_metrics_thresholded"]

    results: dict[str, dict[str, Any]] = {}
    for name, model in (("fp32", fp32_model), ("int8", int8_model)):
        runner = OnnxRunner.from_model(model, provider=provider, threads=threads)
        metrics = evaluate(dataset, Predictor(package, backend="onnx", runner=runner))
        results[name] = {**{key: round(float(metrics[key]), 4) for key in PARITY_METRICS if key in metrics},
                         "images_per_s": round(throughput(runner, calibration, batch_size=batch_size), 2),
                         "providers": runner.providers, "size_mb": round(len(model) / 2**20, 2)}
    fp32, int8 = results["fp32"], results["int8"]
    report = {
        "split": dataset.split, "samples": len(dataset), "calibration_images": len(calibration),
        "thresholds": package.thresholds.to_dict(), "fp32": fp32, "int8": int8,
        "difference_int8_minus_fp32": {key: round(int8[key] - fp32[key], 4) for key in PARITY_METRICS if key in fp32},
        "speedup": round(int8["images_per_s"] / fp32["images_per_s"], 2) if fp32["images_per_s"] else None,
        "throughput": f"network only, batch {batch_size}, the {len(calibration)} calibration images, best of 3 passes",
    }
    logger.info("int8 on %d '%s' images: mIoU %.4f → %.4f, macro F1 %.4f → %.4f, %.1f → %.1f images/s (%.2f×)",
                len(dataset), dataset.split, fp32.get("miou", 0.0), int8.get("miou", 0.0), fp32.get("macro_f1", 0.0),
                int8.get("macro_f1", 0.0), fp32["images_per_s"], int8["images_per_s"], report["speedup"] or 0.0)
    return report


def quantize_export(exported: OnnxExport, package: ModelPackage, dataset: ManifestDataset, *,
                    calibration_limit: int = 64, provider: str = "auto", threads: int | None = None,
                    batch_size: int = 8) -> OnnxExport:
    """``exported`` with its int8 model added (calibrated on ``dataset``) and the parity report under ``"int8"``."""
    predictor = Predictor(package, backend="onnx", runner=OnnxRunner.from_model(exported.model, provider="cpu"))
    calibration = calibration_images(dataset, predictor, calibration_limit)
    started = time.perf_counter()
    int8_model = quantize_int8(exported.model, calibration, batch_size=batch_size)
    seconds = time.perf_counter() - started
    parity = int8_parity(package, dataset, fp32_model=exported.model, int8_model=int8_model, calibration=calibration,
                         provider=provider, threads=threads, batch_size=batch_size)
    where = package.folder / INT8_ONNX_FILE if package.folder is not None else INT8_ONNX_FILE
    int8 = {"file": str(where), "method": "onnxruntime quantize_static: QDQ, per-channel int8 weights, uint8 "
                                          "activations, MinMax calibration", "quantize_seconds": round(seconds, 2),
            **parity}
    return OnnxExport(exported.model, {**exported.report, "int8": int8}, int8_model)
