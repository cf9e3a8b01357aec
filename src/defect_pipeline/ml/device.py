"""Device and numeric precision: resolve ``auto`` against this machine and give the autocast context.

``resolve_device`` and ``resolve_precision`` turn the ``trainer`` block's ``auto`` values into a
concrete device and precision (bf16 on a CPU only where it is measured to be faster than fp32:
:func:`measure_bf16_speed` returns the timings and the decision, :func:`cpu_has_fast_bf16` caches
it); :func:`autocast` is the forward pass's mixed-precision context. The
training engine and :mod:`defect_pipeline.ml.distributed` both use these, so they live apart
from either.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)


BF16_FLAGS = ("amx_bf16", "avx512_bf16")
MIN_BF16_SPEEDUP = 1.25  # bf16 must be at least this much faster than fp32 to be chosen


@dataclass(frozen=True)
class Bf16Measurement:
    """What the bf16 capability check saw and decided (:func:`measure_bf16_speed`).

    ``fp32_seconds``/``bf16_seconds``: the time of ``repeats`` ``size`` x ``size`` matmuls in
    each dtype (None when the flags precondition failed and nothing was measured); ``fast``: the
    decision, ``bf16_seconds * MIN_BF16_SPEEDUP < fp32_seconds``; ``reason``: the decision in words.
    """

    fast: bool
    reason: str
    flags: tuple[str, ...]  # the bf16 flags the CPU advertises
    size: int
    fp32_seconds: float | None = None
    bf16_seconds: float | None = None

    @property
    def speedup(self) -> float | None:
        """fp32 time / bf16 time (above 1: bf16 is faster)."""
        if self.fp32_seconds is None or not self.bf16_seconds:
            return None
        return self.fp32_seconds / self.bf16_seconds


def _matmul_seconds(dtype: torch.dtype, size: int, repeats: int) -> float:
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    a @ b  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return time.perf_counter() - start


def measure_bf16_speed(size: int = 384, *, repeats: int = 4, cpuinfo: str | None = None) -> Bf16Measurement:
    """Whether bf16 matmuls are measurably faster than fp32 on this CPU, with the timings that decided it.

    CPU flags are not enough: a virtual CPU may advertise AVX512-BF16 and still run bf16 slower
    than fp32 (seen on the CI machines: 1.9x slower). So the flags (``amx_bf16`` or
    ``avx512_bf16`` in ``/proc/cpuinfo``) are a precondition and a few-millisecond matmul
    benchmark decides: bf16 must be at least ``MIN_BF16_SPEEDUP`` x faster. ``cpuinfo``: the
    text to read the flags from (default: this machine's ``/proc/cpuinfo``).
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError as error:
            return Bf16Measurement(False, f"fp32: cannot read the CPU flags ({error}); bf16 not measured", (), size)
    flags = tuple(flag for flag in BF16_FLAGS if flag in cpuinfo)
    if not flags:
        return Bf16Measurement(False, f"fp32: this CPU advertises neither {' nor '.join(BF16_FLAGS)} (no native bf16 "
                                      "matmuls); bf16 not measured", flags, size)
    fp32 = _matmul_seconds(torch.float32, size, repeats)
    bf16 = _matmul_seconds(torch.bfloat16, size, repeats)
    fast = bf16 * MIN_BF16_SPEEDUP < fp32
    verdict = "bf16" if fast else "fp32"
    reason = (f"{verdict}: {repeats} {size}x{size} matmuls took {fp32 * 1e3:.2f} ms in fp32 and {bf16 * 1e3:.2f} ms "
              f"in bf16 ({fp32 / bf16:.2f}x; bf16 needs at least {MIN_BF16_SPEEDUP}x) with {', '.join(flags)}")
    return Bf16Measurement(fast, reason, flags, size, fp32, bf16)


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True when bf16 matmuls are measurably faster than fp32 on this CPU (:func:`measure_bf16_speed`,
    measured once per process; the decision and its timings go to the log)."""
    measurement = measure_bf16_speed()
    logger.info("CPU precision check: %s", measurement.reason)
    return measurement.fast


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


@dataclass(frozen=True)
class PredictionDevice:
    """Where and in which precision the prediction steps (thresholds, evaluate, ensemble, inference) run.

    Resolved from the ``trainer`` block by :func:`resolve_prediction_device`; ``reason`` says why in words,
    and :meth:`describe` is what the reports record.
    """

    device: str  # "cpu" | "cuda"
    precision: str  # "fp32" | "bf16" | "fp16"
    reason: str = ""

    def describe(self) -> dict[str, str]:
        return {"accelerator": self.device, "precision": self.precision, "reason": self.reason}


def resolve_prediction_device(accelerator: str, precision: str) -> PredictionDevice:
    """The device and autocast precision of prediction, from ``trainer.accelerator`` and ``trainer.precision``.

    ``accelerator``: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``gpu``. ``precision``: ``auto``
    is bf16 on GPUs that support it (fp16 on older ones) and fp32 on CPUs — unlike training, where a CPU
    with fast bf16 trains in bf16, predictions on a CPU stay fp32 unless bf16 is asked for, so that they
    match the ONNX export and the figures of CPU runs; an explicit ``bf16``/``fp16``/``fp32`` is used as given.

    Raises:
        ValueError: ``cuda`` asked for without CUDA, fp16 on a CPU, or an unknown value (each naming the key).
    """
    if accelerator not in ("auto", "cpu", "cuda", "gpu"):
        raise ValueError(f"trainer.accelerator must be auto, cpu or cuda; got {accelerator!r}")
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"trainer.precision must be auto, fp32, bf16 or fp16; got {precision!r}")
    if accelerator == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
        why = "trainer.accelerator: auto, " + ("CUDA is available" if device == "cuda" else "no CUDA device")
    else:
        device = "cuda" if accelerator in ("cuda", "gpu") else "cpu"
        why = f"trainer.accelerator: {accelerator}"
        if device == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"trainer.accelerator is {accelerator} but CUDA is not available on this machine; use "
                             "trainer.accelerator: auto or cpu")
    if precision == "auto":
        if device == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "fp32"
        why += f"; trainer.precision: auto → {precision}"
    elif precision == "fp16" and device != "cuda":
        raise ValueError("trainer.precision fp16 needs a CUDA device for prediction; use auto, fp32 or bf16")
    else:
        why += f"; trainer.precision: {precision}"
    return PredictionDevice(device, precision, why)
