"""ONNX export of a model package, with a parity check against PyTorch.

The network is exported with ``torch.onnx.export(dynamo=True)`` (torch.export + onnxscript, the
maintained exporter), input ``image`` ``(batch, 3, S, S)`` with a dynamic batch dimension and
outputs ``seg_logits`` / ``cls_logits`` (a package with ``input_mode: tile`` exports its tile-size
network: the predictor calls it once per batch of tiles). The parity check runs PyTorch and onnxruntime on the
same random batch (and on a batch of a different size, to prove the batch is dynamic) and
reports the largest absolute difference of each output; the export fails when it exceeds the
tolerance. That check runs on the CPU execution provider (the exact reference); the model is also
run once on the requested provider (``auto``: TensorRT, CUDA or the CPU, the best onnxruntime has),
and the report's ``providers`` block says which were available, which the session used and how far
that provider's output is from PyTorch. :func:`export_onnx` returns the model in memory as an
:class:`OnnxExport`; :meth:`OnnxExport.save` writes it into a package folder — ``model.onnx`` (and
``model.int8.onnx`` when :mod:`~defect_pipeline.ml.quantize` added one) through a temp name and a
rename, with ``model.onnx.json`` naming the weights it came from, so a stale export is detected
at load time (the ``export`` pipeline saves it through its catalog entry).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from defect_pipeline.ml.onnx_runner import (INT8_ONNX_FILE, available_providers, create_session, import_onnx_package,
                                            resolve_providers, used_providers)
from defect_pipeline.ml.package import ONNX_FILE, ONNX_META_FILE, ModelPackage

logger = logging.getLogger(__name__)


class ExportParityError(RuntimeError):
    """The ONNX model's outputs differ from PyTorch's by more than the tolerance."""


@dataclass(frozen=True)
class OnnxExport:
    """An exported ONNX model (the bytes of ``model.onnx``), its export report (``model.onnx.json``) and,
    when quantised, the int8 model (``model.int8.onnx``)."""

    model: bytes
    report: dict[str, Any]
    int8_model: bytes | None = None

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``model.onnx`` (atomically), ``model.int8.onnx`` when there is one (else an older one is
        removed: it came from other weights) and ``model.onnx.json`` into ``folder``; returns the folder."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in ((ONNX_FILE, self.model), (INT8_ONNX_FILE, self.int8_model)):
            if data is None:
                (folder / name).unlink(missing_ok=True)
                continue
            tmp = folder / f".{name}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, folder / name)
        (folder / ONNX_META_FILE).write_text(json.dumps(self.report, indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> OnnxExport:
        """The export saved in ``folder``; a missing file is named in the error."""
        folder = Path(folder)
        for name in (ONNX_FILE, ONNX_META_FILE):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder} has no {name}; run `kedro run --pipeline=export` first")
        int8 = folder / INT8_ONNX_FILE
        return cls((folder / ONNX_FILE).read_bytes(), json.loads((folder / ONNX_META_FILE).read_text()),
                   int8.read_bytes() if int8.is_file() else None)


def export_onnx(package: ModelPackage, *, opset: int = 18, tolerance: float = 1e-3,
                parity_batches: tuple[int, ...] = (2, 3), seed: int = 0, provider: str = "auto") -> OnnxExport:
    """Export ``package`` to ONNX and check parity; the report names ``model.onnx`` in the package's folder."""
    for name in ("onnx", "onnxscript"):  # torch.onnx.export(dynamo=True) imports them itself
        import_onnx_package(name, "the ONNX export (kedro run --pipeline=export)")
    ort = import_onnx_package("onnxruntime", "the ONNX export's parity check")

    resolve_providers(provider)  # before the (slow) export: an unavailable provider fails now

    model = package.build_model()
    size = int(package.meta["image_size"])
    generator = torch.Generator().manual_seed(seed)
    example = torch.randn(parity_batches[0], 3, size, size, generator=generator)
    started = time.perf_counter()
    program = torch.onnx.export(model, (example,), input_names=["image"], output_names=["seg_logits", "cls_logits"],
                                dynamo=True, opset_version=opset, verbose=False,
                                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},))
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / ONNX_FILE
        program.save(str(path))
        export_seconds = time.perf_counter() - started
        onnx_bytes = path.read_bytes()
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        differences: dict[str, float] = {"seg_logits": 0.0, "cls_logits": 0.0}
        for batch in parity_batches:
            x = torch.randn(batch, 3, size, size, generator=generator)
            with torch.no_grad():
                expected = model(x)
            seg, cls = session.run(["seg_logits", "cls_logits"], {"image": x.numpy()})
            differences["seg_logits"] = max(differences["seg_logits"],
                                            float(np.abs(seg - expected.seg_logits.numpy()).max()))
            differences["cls_logits"] = max(differences["cls_logits"],
                                            float(np.abs(cls - expected.cls_logits.numpy()).max()))
        on_provider = create_session(onnx_bytes, provider=provider)
        seg, cls = on_provider.run(["seg_logits", "cls_logits"], {"image": x.numpy()})
        providers = {"available": available_providers(), "requested": provider, "used": used_providers(on_provider),
                     "max_abs_difference": max(float(np.abs(seg - expected.seg_logits.numpy()).max()),
                                               float(np.abs(cls - expected.cls_logits.numpy()).max()))}
    report = {
        "file": str(package.folder / ONNX_FILE) if package.folder is not None else ONNX_FILE, "opset": opset,
        "input": {"image": ["batch", 3, size, size]}, "input_mode": package.input_mode,
        "outputs": ["seg_logits", "cls_logits"], "dynamic_batch": True, "parity_batches": list(parity_batches),
        "max_abs_difference": differences, "tolerance": tolerance,
        "parity_ok": max(differences.values()) <= tolerance, "export_seconds": round(export_seconds, 2),
        "weights_sha256": package.weights_sha256, "backbone": package.meta.get("backbone"),
        "onnxruntime": ort.__version__, "torch": torch.__version__, "providers": providers,
    }
    if not report["parity_ok"]:
        raise ExportParityError(f"ONNX export differs from PyTorch by {max(differences.values()):.3g} "
                                f"(> tolerance {tolerance}): {differences}; nothing was written")
    logger.info("exported %s: max |ONNX - PyTorch| seg %.2e, cls %.2e", report["file"],
                differences["seg_logits"], differences["cls_logits"])
    return OnnxExport(onnx_bytes, report)
