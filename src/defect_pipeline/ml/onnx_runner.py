"""Running a model package's exported ``model.onnx`` with onnxruntime, outputs like the PyTorch model's.

:class:`OnnxRunner` is the ``backend="onnx"`` forward pass of
:class:`~defect_pipeline.ml.predict.Predictor`: it refuses a missing or stale export (one made
from other weights than the package's) and returns ``(seg_logits, cls_logits)`` tensors, so the
predictor's preprocessing and decisions are the same for both backends.
"""

from __future__ import annotations

import json

import torch

from defect_pipeline.ml.package import ONNX_FILE, ONNX_META_FILE, ModelPackage


class OnnxRunner:
    """The package's ``model.onnx`` through onnxruntime (CPU), outputs like the PyTorch model's."""

    def __init__(self, package: ModelPackage, threads: int | None = None):
        if package.folder is None or not (package.folder / ONNX_FILE).is_file():
            where = package.folder or "the model package"
            raise FileNotFoundError(f"{where} has no {ONNX_FILE}; run `kedro run --pipeline=export` first, or use "
                                    "inference.backend: torch")
        sidecar = package.folder / ONNX_META_FILE
        exported_from = json.loads(sidecar.read_text()).get("weights_sha256") if sidecar.is_file() else None
        if exported_from != package.weights_sha256:
            raise ValueError(f"{package.folder / ONNX_FILE} was exported from other weights than this package's "
                             "(stale export); run `kedro run --pipeline=export` again")
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 0  # 0: onnxruntime's default (one thread per physical core)
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(package.folder / ONNX_FILE), options,
                                            providers=["CPUExecutionProvider"])

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seg, cls = self.session.run(["seg_logits", "cls_logits"], {"image": batch.cpu().numpy()})
        return torch.from_numpy(seg), torch.from_numpy(cls)
