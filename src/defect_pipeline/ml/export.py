"""ONNX export of a model package, with a parity check against PyTorch.

The network is exported with ``torch.onnx.export(dynamo=True)`` (torch.export + onnxscript, the
maintained exporter), input ``image`` ``(batch, 3, S, S)`` with a dynamic batch dimension and
outputs ``seg_logits`` / ``cls_logits``. The parity check runs PyTorch and onnxruntime on the
same random batch (and on a batch of a different size, to prove the batch is dynamic) and
reports the largest absolute difference of each output; the export fails when it exceeds the
tolerance. The file is written to a temp name and renamed, with ``model.onnx.json`` naming the
weights it came from, so a stale export is detected at load time.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from defect_pipeline.ml.predict import ONNX_FILE, ONNX_META_FILE, ModelPackage

logger = logging.getLogger(__name__)


class ExportParityError(RuntimeError):
    """The ONNX model's outputs differ from PyTorch's by more than the tolerance."""


def export_onnx(package: ModelPackage, folder: str | os.PathLike, *, opset: int = 18, tolerance: float = 1e-3,
                parity_batches: tuple[int, ...] = (2, 3), seed: int = 0) -> dict[str, Any]:
    """Write ``model.onnx`` (+ ``model.onnx.json``) into ``folder``; returns the export report."""
    import onnxruntime as ort

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = package.build_model()
    size = int(package.meta["image_size"])
    generator = torch.Generator().manual_seed(seed)
    example = torch.randn(parity_batches[0], 3, size, size, generator=generator)
    started = time.perf_counter()
    program = torch.onnx.export(model, (example,), input_names=["image"], output_names=["seg_logits", "cls_logits"],
                                dynamo=True, opset_version=opset, verbose=False,
                                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},))
    tmp = folder / f".{ONNX_FILE}.tmp"
    program.save(str(tmp))
    export_seconds = time.perf_counter() - started

    session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    differences: dict[str, float] = {"seg_logits": 0.0, "cls_logits": 0.0}
    for batch in parity_batches:
        x = torch.randn(batch, 3, size, size, generator=generator)
        with torch.no_grad():
            expected = model(x)
        seg, cls = session.run(["seg_logits", "cls_logits"], {"image": x.numpy()})
        differences["seg_logits"] = max(differences["seg_logits"], float(np.abs(seg - expected.seg_logits.numpy()).max()))
        differences["cls_logits"] = max(differences["cls_logits"], float(np.abs(cls - expected.cls_logits.numpy()).max()))
    report = {
        "file": str(folder / ONNX_FILE), "opset": opset, "input": {"image": ["batch", 3, size, size]},
        "outputs": ["seg_logits", "cls_logits"], "dynamic_batch": True, "parity_batches": list(parity_batches),
        "max_abs_difference": differences, "tolerance": tolerance,
        "parity_ok": max(differences.values()) <= tolerance, "export_seconds": round(export_seconds, 2),
        "weights_sha256": package.weights_sha256, "backbone": package.meta.get("backbone"),
        "onnxruntime": ort.__version__, "torch": torch.__version__,
    }
    if not report["parity_ok"]:
        tmp.unlink(missing_ok=True)
        raise ExportParityError(f"ONNX export differs from PyTorch by {max(differences.values()):.3g} "
                                f"(> tolerance {tolerance}): {differences}; nothing was written")
    os.replace(tmp, folder / ONNX_FILE)
    (folder / ONNX_META_FILE).write_text(json.dumps(report, indent=2))
    logger.info("exported %s: max |ONNX - PyTorch| seg %.2e, cls %.2e", folder / ONNX_FILE,
                differences["seg_logits"], differences["cls_logits"])
    return report
