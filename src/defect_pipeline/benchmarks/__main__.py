"""``python -m defect_pipeline.benchmarks <name> [args]``: run one benchmark by name."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "data_check": "defect_pipeline.benchmarks.data_check",
    "training": "defect_pipeline.benchmarks.training",
    "test_metrics": "defect_pipeline.benchmarks.test_metrics",
    "evaluation": "defect_pipeline.benchmarks.evaluation",
    "backbones": "defect_pipeline.benchmarks.backbones",
    "ablation": "defect_pipeline.benchmarks.ablation",
    "distributed": "defect_pipeline.benchmarks.distributed",
    "ensemble": "defect_pipeline.benchmarks.ensemble",
    "schedules": "defect_pipeline.benchmarks.schedules",  # a figure for docs/training.md, nothing measured
    "tiling": "defect_pipeline.benchmarks.tiling",
    "int8": "defect_pipeline.benchmarks.int8",  # fp32 vs int8 ONNX, from the export's report
    "gpu": "defect_pipeline.benchmarks.gpu",  # engine vs bare loop, MFU, inference, loader ceiling on a GPU
}


def main() -> None:
    """Dispatch to the named benchmark's ``main``."""
    if len(sys.argv) < 2 or sys.argv[1] not in BENCHMARKS:
        sys.exit(f"usage: python -m defect_pipeline.benchmarks {{{','.join(BENCHMARKS)}}} [options]")
    importlib.import_module(BENCHMARKS[sys.argv[1]]).main(sys.argv[2:])


if __name__ == "__main__":
    main()
