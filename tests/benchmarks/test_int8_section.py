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


def test_the_section_lists_every_setting_tried_and_the_one_kept() -> None:
    """Failed before the export tried several settings (the section had no settings table)."""
    report = _report(1.58, 0.768)
    block = report["int8"]
    for side in (block["fp32"], block["int8"]):
        side["images_per_cpu_s"] = side["images_per_s"]
    tensor = {**block["int8"], "images_per_cpu_s": 175.0, "method": "per-tensor recipe",
              "difference_int8_minus_fp32": {"miou": -0.05, "macro_f1": -0.02}}
    block.update(setting="per_channel", choice="the most accurate", settings={
        "per_channel": {**block["int8"], "method": "per-channel recipe",
                        "difference_int8_minus_fp32": {"miou": -0.012, "macro_f1": -0.006}},
        "per_tensor": tensor})
    text = render(report, title="T", command="c", measured_by="m", machine="here")
    assert "| network images/s (CPU time, 1 thread) | 100.0 | 158.0 | **1.58×** |" in text
    assert "| per_channel (kept) | per-channel recipe | 158.0 | 1.58× | -1.2 | -0.6 |" in text
    assert "| per_tensor | per-tensor recipe | 175.0 | 1.75× | -5.0 | -2.0 |" in text
    assert "kept: `per_channel`, the most accurate." in text


def test_a_report_without_int8_and_a_missing_report_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="export.quantize=int8"):
        render({"file": "model.onnx"}, title="T", command="c", measured_by="m", machine="here")
    with pytest.raises(SystemExit, match="onnx_export.json does not exist"):
        main(["--project", str(tmp_path), "--doc", str(tmp_path / "b.md")])
