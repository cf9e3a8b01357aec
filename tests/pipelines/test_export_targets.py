"""``kedro run --pipeline=export --params export.quantize=int8`` on the tiny demo: the int8 model, its parity
report (fp32 vs int8 on val: mIoU, macro F1, images/s) and the providers, then inference on the int8 model.

Before issue 17 ``export.quantize`` was an unknown parameter (refused at start-up) and the report had no
``int8`` nor ``providers`` block.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import copy_project, run_kedro

pytestmark = pytest.mark.slow


def test_int8_export_writes_the_parity_report_and_inference_uses_it(tiny_default_run: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    project = copy_project(tiny_default_run, tmp_path / "project", monkeypatch)
    run_kedro(project, "export", params={"export": {"quantize": "int8", "calibration_images": 8}})

    report = json.loads((project / "data/08_reporting/export/onnx_export.json").read_text())
    assert report["parity_ok"] and report["providers"]["requested"] == "auto"
    assert "CPUExecutionProvider" in report["providers"]["used"]
    int8 = report["int8"]
    assert int8["split"] == "val" and int8["samples"] > 0 and int8["calibration_images"] == min(8, int8["samples"])
    for model in ("fp32", "int8"):
        assert {"miou", "macro_f1", "images_per_s", "providers"} <= set(int8[model])
        assert 0.0 <= int8[model]["miou"] <= 1.0 and int8[model]["images_per_s"] > 0
    assert int8["difference_int8_minus_fp32"]["miou"] == pytest.approx(int8["int8"]["miou"] - int8["fp32"]["miou"],
                                                                        abs=2e-4)
    assert int8["int8"]["size_mb"] < int8["fp32"]["size_mb"]
    tuned = project / "data/06_models/tuned"
    assert (tuned / "model.int8.onnx").is_file()
    assert json.loads((tuned / "model.onnx.json").read_text())["int8"]["speedup"] == int8["speedup"]

    images = str(project / "data/01_raw")  # the demo's files (images and masks): any picture will do
    run_kedro(project, "inference", params={"inference": {"input_dir": images, "backend": "onnx",
                                                          "onnx_precision": "int8", "limit": 3}})
    summary = json.loads((project / "data/07_model_output/inference_summary.json").read_text())
    assert summary["backend"] == "onnx" and summary["model"]["onnx_precision"] == "int8"
    assert summary["model"]["onnx_providers"][-1] == "CPUExecutionProvider"
