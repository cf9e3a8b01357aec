"""Running a model package's exported ``model.onnx`` with onnxruntime, outputs like the PyTorch model's.

:class:`OnnxRunner` is the ``backend="onnx"`` forward pass of
:class:`~defect_pipeline.ml.predict.Predictor`: it refuses a missing or stale export (one made
from other weights than the package's) and returns ``(seg_logits, cls_logits)`` tensors, so the
predictor's preprocessing and decisions are the same for both backends. :func:`choose_providers` picks the
execution providers: TensorRT and CUDA (with the CPU behind them) when the predictor's device is CUDA and
``onnxruntime-gpu`` offers them, else the CPU; the runner logs which one runs (``provider``).
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Sequence
from types import ModuleType

import torch

from defect_pipeline.ml.package import ONNX_FILE, ONNX_META_FILE, ModelPackage

logger = logging.getLogger(__name__)

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")  # preferred first


def choose_providers(device: str, available: Sequence[str]) -> tuple[list[str], str]:
    """The onnxruntime execution providers for ``device`` among ``available``, and why, in words.

    CUDA device: TensorRT and CUDA where onnxruntime offers them (``pip install onnxruntime-gpu``), then the
    CPU for operators they lack; none of them offered: the CPU, and the reason says what to install.
    """
    if not device.startswith("cuda"):
        return ["CPUExecutionProvider"], f"device {device}: CPUExecutionProvider"
    gpu = [name for name in GPU_PROVIDERS if name in available]
    if not gpu:
        return ["CPUExecutionProvider"], (f"device {device}, but this onnxruntime offers no GPU provider "
                                          f"({', '.join(available)}): CPUExecutionProvider; install onnxruntime-gpu "
                                          "(instead of onnxruntime) to run the ONNX model on the GPU")
    return [*gpu, "CPUExecutionProvider"], f"device {device}: {', '.join(gpu)}"


#: the install line named when an ONNX package is missing (the packages are the ``onnx`` extra of pyproject.toml)
ONNX_EXTRA_INSTALL = 'pip install -c constraints.txt -e ".[onnx]"'


def import_onnx_package(name: str, purpose: str) -> ModuleType:
    """Import ``name`` (onnx, onnxscript, onnxruntime) or say which extra installs it and what needs it."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise ImportError(f"{purpose} needs the package {name!r}, which is not installed: it is part of the "
                          f"project's optional ONNX extra; install it with {ONNX_EXTRA_INSTALL} (the dev extra "
                          "includes it), or use inference.backend: torch") from error


class OnnxRunner:
    """The package's ``model.onnx`` through onnxruntime, outputs like the PyTorch model's.

    ``device``: ``cuda`` runs it on the GPU where onnxruntime-gpu is installed (:func:`choose_providers`);
    ``provider`` names the execution provider the session actually uses.
    """

    def __init__(self, package: ModelPackage, threads: int | None = None, device: str = "cpu"):
        if package.folder is None or not (package.folder / ONNX_FILE).is_file():
            where = package.folder or "the model package"
            raise FileNotFoundError(f"{where} has no {ONNX_FILE}; run `kedro run --pipeline=export` first, or use "
                                    "inference.backend: torch")
        sidecar = package.folder / ONNX_META_FILE
        exported_from = json.loads(sidecar.read_text()).get("weights_sha256") if sidecar.is_file() else None
        if exported_from != package.weights_sha256:
            raise ValueError(f"{package.folder / ONNX_FILE} was exported from other weights than this package's "
                             "(stale export); run `kedro run --pipeline=export` again")
        ort = import_onnx_package("onnxruntime", "inference.backend: onnx")

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 0  # 0: onnxruntime's default (one thread per physical core)
        options.inter_op_num_threads = 1
        providers, reason = choose_providers(device, ort.get_available_providers())
        self.session = ort.InferenceSession(str(package.folder / ONNX_FILE), options, providers=providers)
        self.provider = self.session.get_providers()[0]
        logger.info("onnxruntime runs %s on %s (%s)", ONNX_FILE, self.provider, reason)

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seg, cls = self.session.run(["seg_logits", "cls_logits"], {"image": batch.cpu().numpy()})
        return torch.from_numpy(seg), torch.from_numpy(cls)
