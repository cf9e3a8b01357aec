"""``python -m defect_pipeline.benchmarks int8``: the fp32 vs int8 ONNX parity row of docs/benchmarks.md.

Copies the ``int8`` block of an export's report (``<data root>/08_reporting/export/onnx_export.json``,
written by ``kedro run --pipeline=export --params export.quantize=int8``) into the ``int8`` section:
accuracy on the calibration split at the package's tuned thresholds and network images/s for both
models, measured by the export in one process (so the ratio is from one run), and the goal of issue 17
(>= 2x fp32 throughput, <= 1 point mIoU lost) checked against it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from defect_pipeline.benchmarks import write_section

GOAL_SPEEDUP, GOAL_MIOU_LOSS = 2.0, 0.01


def render(report: dict[str, Any], *, title: str, command: str, measured_by: str, machine: str) -> str:
    """The section from an export report (``onnx_export.json``) that holds an ``int8`` block."""
    block = report.get("int8")
    if not block:
        raise ValueError("the export report has no 'int8' block: run the export with export.quantize=int8")
    fp32, int8, diff = block["fp32"], block["int8"], block["difference_int8_minus_fp32"]
    pct = lambda v: f"{100 * v:.1f} %"  # noqa: E731
    rows = [f"| {name} | {pct(fp32[key])} | {pct(int8[key])} | {100 * diff[key]:+.1f} |"
            for name, key in (("mIoU incl. background", "miou"), ("mIoU over defect classes", "miou_defects"),
                              ("image macro F1", "macro_f1"), ("image accuracy", "accuracy"))]
    met = block["speedup"] >= GOAL_SPEEDUP and -diff["miou"] <= GOAL_MIOU_LOSS
    fp32_speed = "images_per_cpu_s" if fp32.get("images_per_cpu_s") else "images_per_s"
    return "\n".join([
        f"## {title}: ONNX fp32 vs int8 (onnxruntime static quantisation)",
        "",
        f"Produced by `{command}`, then `{measured_by}`, on {machine}. {block['method']}; calibrated on "
        f"{block['calibration_images']} {block['split']} images; accuracy on all {block['samples']} "
        f"{block['split']} images at the package's tuned thresholds; throughput: {block['throughput']}. "
        f"Model: `{Path(block['file']).parent.name}` package of that run ({report.get('backbone', 'backbone as packaged')}).",
        "",
        "| metric | fp32 | int8 | int8 − fp32 (points) |",
        "|---|---|---|---|",
        *rows,
        f"| network images/s{' (CPU time, 1 thread)' if fp32_speed == 'images_per_cpu_s' else ''} | "
        f"{fp32[fp32_speed]:.1f} | {int8[fp32_speed]:.1f} | **{block['speedup']:.2f}×** |",
        f"| file size (MB) | {fp32['size_mb']:.1f} | {int8['size_mb']:.1f} | |",
        "",
        *settings_table(block, fp32_speed),
        f"Goal (issue 17): ≥ {GOAL_SPEEDUP:g}× fp32 throughput with ≤ {100 * GOAL_MIOU_LOSS:g} point of mIoU lost: "
        + ("met." if met else "**not met** on this model and CPU (why, and what else was tried: "
                              "docs/evaluation.md, \"Export targets\")."),
    ])


def settings_table(block: dict[str, Any], speed: str) -> list[str]:
    """The int8 settings the export tried (``export.int8_settings``), each against fp32, and which it kept."""
    settings = block.get("settings")
    if not settings:
        return []
    unit = "images/s of CPU time, 1 thread" if speed == "images_per_cpu_s" else "images/s, wall clock"
    rows = [f"| {name}{' (kept)' if name == block.get('setting') else ''} | {r.get('method', '')} | "
            f"{r[speed]:.1f} | {r[speed] / block['fp32'][speed]:.2f}× | "
            f"{100 * r['difference_int8_minus_fp32']['miou']:+.1f} | "
            f"{100 * r['difference_int8_minus_fp32'].get('macro_f1', 0.0):+.1f} |"
            for name, r in settings.items()]
    return [f"Settings tried (`export.int8_settings`; fp32: {block['fp32'][speed]:.1f} {unit}); kept: "
            f"`{block.get('setting')}`, {block.get('choice', '')}.", "",
            f"| setting | recipe | int8 {unit} | × fp32 | mIoU − fp32 (points) | macro F1 − fp32 (points) |",
            "|---|---|---|---|---|---|", *rows, ""]


def main(argv: list[str] | None = None) -> None:
    """Write the ``int8`` section from a project's export report."""
    from defect_pipeline.util import describe_machine

    parser = argparse.ArgumentParser(prog="python -m defect_pipeline.benchmarks int8")
    parser.add_argument("--project", default=".")
    parser.add_argument("--data-root", default="data", help="data (default environment), data/neu_seg (--env neu_seg)")
    parser.add_argument("--title", default="NEU-Seg (CPU)")
    parser.add_argument("--command", default="kedro run --env neu_seg --pipeline=export --params "
                        "\"export.quantize=int8,runtime.onnx_threads=1\"")
    parser.add_argument("--doc", default="docs/benchmarks.md")
    args = parser.parse_args(argv)
    path = Path(args.project) / args.data_root / "08_reporting/export/onnx_export.json"
    if not path.is_file():
        raise SystemExit(f"int8: {path} does not exist; run `{args.command}` in {args.project} first")
    measured_by = f"python -m defect_pipeline.benchmarks int8 --project {args.project} --data-root {args.data_root}"
    body = render(json.loads(path.read_text(encoding="utf-8")), title=args.title, command=args.command,
                  measured_by=measured_by, machine=describe_machine())
    write_section(Path(args.doc), "int8", body)
    print(body)
