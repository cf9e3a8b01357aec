"""The ``int8`` benchmark section is the export's parity report, and it says whether the goal was met.

Failed before the command existed (no module ``defect_pipeline.benchmarks.int8``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from defect_pipeline.benchmarks.int8 import main, render


def _report(speedup: float, int8_miou: float) -> dict:
    side = {"miou": 0.78, "miou_defects": 0.72, "macro_f1": 0.97, "accuracy": 0.97, "images_per_s": 100.0,
            "size_mb": 15.0}
    int8 = {**side, "miou": int8_miou, "images_per_s": 100.0 * speedup, "size_mb": 5.0}
    return {"backbone": "efficientnet_b0", "int8": {
        "file": "/x/data/06_models/tuned/model.int8.onnx", "method": "quantize_static", "split": "val",
        "samples": 892, "calibration_images": 64, "throughput": "batch 8", "fp32": side, "int8": int8,
        "difference_int8_minus_fp32": {k: int8[k] - side[k] for k in ("miou", "miou_defects", "macro_f1", "accuracy")},
        "speedup": speedup}}


def test_the_section_holds_both_models_and_judges_the_goal() -> None:
    slow = render(_report(1.0, 0.764), title="T", command="c", measured_by="m", machine="here")
    assert "| mIoU incl. background | 78.0 % | 76.4 % | -1.6 |" in slow and "**1.00×**" in slow
    assert "**not met**" in slow and "efficientnet_b0" in slow
    fast = render(_report(2.4, 0.775), title="T", command="c", measured_by="m", machine="here")
    assert "**2.40×**" in fast and fast.rstrip().endswith("met.") and "not met" not in fast


def test_a_report_without_int8_and_a_missing_report_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="export.quantize=int8"):
        render({"file": "model.onnx"}, title="T", command="c", measured_by="m", machine="here")
    with pytest.raises(SystemExit, match="onnx_export.json does not exist"):
        main(["--project", str(tmp_path), "--doc", str(tmp_path / "b.md")])
