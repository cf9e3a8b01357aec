"""Running a model package's exported ONNX model with onnxruntime, outputs like the PyTorch model's.

:class:`OnnxRunner` is the ``backend="onnx"`` forward pass of
:class:`~defect_pipeline.ml.predict.Predictor`: it runs ``model.onnx`` (fp32) or ``model.int8.onnx``
(the statically quantised model of ``export.quantize: int8``), refuses a missing or stale export (one
made from other weights than the package's) and returns ``(seg_logits, cls_logits)`` tensors, so the
predictor's preprocessing and decisions are the same for every backend.

Execution providers: ``auto`` takes the best onnxruntime offers here — TensorRT, then CUDA (both
only with the ``onnxruntime-gpu`` build and the NVIDIA libraries), then the CPU — so the same
setting runs on a GPU server and on a CPU box at the line; ``tensorrt``, ``cuda`` or ``cpu`` ask
for one, and one that this onnxruntime does not have is refused with the ones it has.
onnxruntime itself falls back to the next provider when one fails to start (a missing TensorRT
library, say); :func:`used_providers` says what a session really runs on.

:func:`choose_providers` is the ``auto`` choice for a predictor's device: TensorRT and CUDA (with the
CPU behind them) when the device is CUDA and this onnxruntime offers them, else the CPU.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

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


INT8_ONNX_FILE = "model.int8.onnx"
ONNX_FILES = {"fp32": ONNX_FILE, "int8": INT8_ONNX_FILE}
PROVIDERS = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider",
             "cpu": "CPUExecutionProvider"}
PROVIDER_CHOICES = ("auto", *PROVIDERS)


def available_providers() -> list[str]:
    """The execution providers this onnxruntime build offers (e.g. ``["CPUExecutionProvider"]``)."""
    ort = import_onnx_package("onnxruntime", "running an ONNX model")

    return list(ort.get_available_providers())


def resolve_providers(provider: str, available: list[str] | None = None) -> list[str]:
    """The onnxruntime provider list for ``provider`` (``auto``, ``tensorrt``, ``cuda`` or ``cpu``), best first.

    ``auto``: every one of TensorRT, CUDA, CPU that is available, in that order. A named one must be
    available (``ValueError`` naming those that are); the CPU always follows as onnxruntime's fallback.
    """
    available = available_providers() if available is None else available
    if provider not in PROVIDER_CHOICES:
        raise ValueError(f"execution provider must be one of {', '.join(PROVIDER_CHOICES)}, got {provider!r}")
    if provider == "auto":
        return [name for name in PROVIDERS.values() if name in available]
    wanted = PROVIDERS[provider]
    if wanted not in available:
        raise ValueError(f"onnxruntime here has no {wanted} (available: {', '.join(available)}); use provider "
                         "'auto' or 'cpu', or install the onnxruntime build that has it (onnxruntime-gpu with "
                         "CUDA / TensorRT)")
    return [wanted] + (["CPUExecutionProvider"] if wanted != "CPUExecutionProvider" else [])


def create_session(model: str | bytes, *, provider: str = "auto", threads: int | None = None,
                   device: str | None = None) -> Any:
    """An onnxruntime ``InferenceSession`` of ``model`` (a path or the model's bytes) on ``provider``.

    ``device`` (a predictor's): with ``provider: auto``, the providers :func:`choose_providers` picks for it
    (the CPU for a CPU device, even where onnxruntime-gpu is installed)."""
    ort = import_onnx_package("onnxruntime", "running an ONNX model (inference.backend: onnx, the export)")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 0  # 0: onnxruntime's default (one thread per physical core)
    options.inter_op_num_threads = 1
    if provider == "auto" and device is not None:
        providers, reason = choose_providers(device, ort.get_available_providers())
        logger.info("onnxruntime providers: %s", reason)
    else:
        providers = resolve_providers(provider)
    return ort.InferenceSession(model, options, providers=providers)


def used_providers(session: Any) -> list[str]:
    """The providers a session runs on, in onnxruntime's order of preference."""
    return list(session.get_providers())


def onnx_path(package: ModelPackage, precision: str = "fp32") -> Path:
    """The package's exported model of ``precision`` (``fp32`` or ``int8``), checked to exist and to be current."""
    if precision not in ONNX_FILES:
        raise ValueError(f"ONNX precision must be one of {', '.join(ONNX_FILES)}, got {precision!r}")
    name = ONNX_FILES[precision]
    where = package.folder or "the model package"
    if package.folder is None or not (package.folder / name).is_file():
        how = ("`kedro run --pipeline=export --params export.quantize=int8`" if precision == "int8"
               else "`kedro run --pipeline=export`")
        raise FileNotFoundError(f"{where} has no {name}; run {how} first, or use inference.backend: torch")
    sidecar = package.folder / ONNX_META_FILE
    exported_from = json.loads(sidecar.read_text()).get("weights_sha256") if sidecar.is_file() else None
    if exported_from != package.weights_sha256:
        raise ValueError(f"{package.folder / name} was exported from other weights than this package's "
                         "(stale export); run `kedro run --pipeline=export` again")
    return package.folder / name


class OnnxRunner:
    """An exported ONNX model through onnxruntime, outputs like the PyTorch model's.

    Built from a package (its ``model.onnx`` or ``model.int8.onnx``) or, with :meth:`from_model`, from
    a model in memory (the export checks its models before they are written).
    """

    def __init__(self, package: ModelPackage, threads: int | None = None, *, precision: str = "fp32",
                 provider: str = "auto", device: str | None = None):
        self.session = create_session(str(onnx_path(package, precision)), provider=provider, threads=threads,
                                      device=device)
        self.provider = used_providers(self.session)[0]
        logger.info("onnxruntime runs %s on %s", onnx_path(package, precision).name, self.provider)

    @classmethod
    def from_model(cls, model: bytes, *, provider: str = "auto", threads: int | None = None) -> OnnxRunner:
        runner = cls.__new__(cls)
        runner.session = create_session(model, provider=provider, threads=threads)
        runner.provider = used_providers(runner.session)[0]
        return runner

    @property
    def providers(self) -> list[str]:
        return used_providers(self.session)

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seg, cls = self.session.run(["seg_logits", "cls_logits"], {"image": batch.cpu().numpy()})
        return torch.from_numpy(seg), torch.from_numpy(cls)
