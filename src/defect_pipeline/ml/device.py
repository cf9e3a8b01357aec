"""Device and numeric precision: resolve ``auto`` against this machine and give the autocast context.

``resolve_device`` and ``resolve_precision`` turn the ``trainer`` block's ``auto`` values into a
concrete device and precision (bf16 on a CPU only where it is measured to be faster than fp32:
:func:`cpu_has_fast_bf16`); :func:`autocast` is the forward pass's mixed-precision context. The
training engine and :mod:`defect_pipeline.ml.distributed` both use these, so they live apart
from either.
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path

import torch

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True when bf16 matmuls are measurably faster than fp32 on this CPU.

    CPU flags are not enough: a virtual CPU may advertise AVX512-BF16 and still run bf16 slower
    than fp32 (seen on the CI machines: 1.9× slower). So the flags are a precondition and a
    few-millisecond matmul benchmark decides; bf16 must be at least 1.25× faster.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    if "amx_bf16" not in flags and "avx512_bf16" not in flags:
        return False

    def seconds(dtype: torch.dtype) -> float:
        a = torch.randn(384, 384).to(dtype)
        b = torch.randn(384, 384).to(dtype)
        a @ b  # warm-up
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        return time.perf_counter() - start

    return seconds(torch.bfloat16) * 1.25 < seconds(torch.float32)


def resolve_device(requested: str) -> str:
    """``auto`` → ``cuda`` when available, else ``cpu``."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {requested!r} requested but CUDA is not available; use device: auto or cpu")
    return requested


def resolve_precision(requested: str, device: str) -> str:
    """Pick the autocast precision by capability.

    ``auto``: bf16 (or fp16 where bf16 is unsupported) on CUDA; on CPU bf16 only where it is
    measured to be faster than fp32 (:func:`cpu_has_fast_bf16`), otherwise fp32 — on AVX2-only
    CPUs bf16 matmuls are 50–400× slower.
    """
    on_cuda = device.startswith("cuda")
    if requested == "auto":
        if on_cuda:
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    if requested == "fp16" and not on_cuda:
        raise ValueError("precision fp16 needs a CUDA device; use fp32 (or bf16 on CPUs with AMX/AVX512-BF16)")
    if requested == "bf16" and not on_cuda and not cpu_has_fast_bf16():
        logger.warning("precision bf16 on a CPU without native bf16 support is much slower than fp32")
    return requested


def autocast(device: str, precision: str) -> torch.autocast:
    """The mixed-precision context for a forward pass: disabled for fp32, else bf16 or fp16 on ``device``."""
    if precision == "fp32":
        return torch.autocast(device_type=device.split(":")[0], enabled=False)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.split(":")[0], dtype=dtype)
