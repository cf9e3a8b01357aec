"""The CPU precision check of ``precision: auto``: the real bf16 measurement, its decision and the timings behind it.

These run the real matmul benchmark (at 32x32, a fraction of a millisecond) instead of replacing
``cpu_has_fast_bf16`` as ``tests/ml/test_engine.py`` does. Against the old code they fail at the
import: ``cpu_has_fast_bf16`` returned a bare bool, so nothing showed which timings decided it; and
against a check mutated to invert its rule, the consistency test fails (run by hand).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from defect_pipeline.ml import device
from defect_pipeline.ml.device import BF16_FLAGS, MIN_BF16_SPEEDUP, Bf16Measurement, measure_bf16_speed

WITH_FLAGS = "processor : 0\nflags : fpu sse2 avx2 avx512f avx512_bf16 amx_bf16\n"
WITHOUT_FLAGS = "processor : 0\nflags : fpu sse2 avx2 fma\n"


def test_the_measured_decision_is_the_rule_applied_to_the_timings_it_reports() -> None:
    """Flags taken as present so that the matmuls run on any CPU (bf16 runs everywhere, only slowly)."""
    measurement = measure_bf16_speed(32, cpuinfo=WITH_FLAGS)
    assert measurement.flags == ("amx_bf16", "avx512_bf16") and measurement.size == 32
    assert measurement.fp32_seconds > 0 and measurement.bf16_seconds > 0
    assert measurement.fast == (measurement.bf16_seconds * MIN_BF16_SPEEDUP < measurement.fp32_seconds)
    assert measurement.speedup == pytest.approx(measurement.fp32_seconds / measurement.bf16_seconds)
    # the reason states the decision and the very timings it was taken from
    assert measurement.reason.startswith("bf16: " if measurement.fast else "fp32: ")
    assert f"{measurement.fp32_seconds * 1e3:.2f} ms in fp32" in measurement.reason
    assert f"{measurement.bf16_seconds * 1e3:.2f} ms in bf16" in measurement.reason
    assert f"bf16 needs at least {MIN_BF16_SPEEDUP}x" in measurement.reason


def test_a_cpu_without_the_bf16_flags_gets_fp32_and_is_told_why() -> None:
    measurement = measure_bf16_speed(32, cpuinfo=WITHOUT_FLAGS)
    assert measurement == Bf16Measurement(
        False, "fp32: this CPU advertises neither amx_bf16 nor avx512_bf16 (no native bf16 matmuls); bf16 not measured",
        (), 32)
    assert measurement.speedup is None


def test_this_machines_measurement_follows_its_own_flags_and_timings() -> None:
    """The real ``/proc/cpuinfo``: measured only with a bf16 flag, and then decided by its timings."""
    flags = tuple(flag for flag in BF16_FLAGS if flag in Path("/proc/cpuinfo").read_text())
    measurement = measure_bf16_speed(32)
    assert measurement.flags == flags
    assert (measurement.fp32_seconds is None) == (measurement.bf16_seconds is None) == (not flags)
    assert measurement.fast == (bool(flags) and measurement.bf16_seconds * MIN_BF16_SPEEDUP < measurement.fp32_seconds)


def test_cpu_has_fast_bf16_returns_the_decision_and_logs_its_reason(monkeypatch, caplog) -> None:
    seen = Bf16Measurement(True, "bf16: 4 384x384 matmuls took 9.00 ms in fp32 and 3.00 ms in bf16", ("amx_bf16",),
                           384, 0.009, 0.003)
    monkeypatch.setattr(device, "measure_bf16_speed", lambda: seen)
    device.cpu_has_fast_bf16.cache_clear()
    try:
        with caplog.at_level(logging.INFO, logger="defect_pipeline.ml.device"):
            assert device.cpu_has_fast_bf16() is True
        assert "CPU precision check: bf16: 4 384x384 matmuls took 9.00 ms in fp32" in caplog.text
    finally:
        device.cpu_has_fast_bf16.cache_clear()  # the next caller measures this machine again
