"""``python -m defect_pipeline.benchmarks gpu``: its section without CUDA, every measurement on a CPU, and no
Kedro/MLflow import (GPU machines may have neither).

Against the code before issue 16 these fail: the ``gpu`` benchmark did not exist.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from defect_pipeline.benchmarks import gpu
from tests.conftest import REPO_ROOT


def test_without_cuda_the_section_says_not_measured_and_gives_the_command(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n<!-- bench:other:start -->\nkept\n<!-- bench:other:end -->\n")
    script = (f"import sys; import torch; torch.cuda.is_available = lambda: False; "
              f"sys.argv = ['x', 'gpu', '--doc', {str(doc)!r}]; "
              "from defect_pipeline.benchmarks.__main__ import main; main(); "
              "assert 'kedro' not in sys.modules and 'mlflow' not in sys.modules, 'imported kedro/mlflow'")
    subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO_ROOT, capture_output=True, timeout=600,
                   env={"PYTHONPATH": str(REPO_ROOT / "src"), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1",
                        "HOME": str(tmp_path)})
    text = doc.read_text()
    assert "<!-- bench:gpu:start -->" in text and "**Not measured**: no CUDA device" in text
    assert gpu.COMMAND in text and "kept" in text


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_on_a_cpu_every_measurement_runs_and_lands_in_the_table(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    torch.set_num_threads(1)
    gpu.main(["--device", "cpu", "--backbones", "resnet18", "--image-size", "64", "--batch-size", "2", "--steps", "2",
              "--workers", "0", "--doc", str(doc)])
    row = next(line for line in doc.read_text().splitlines() if line.startswith("| resnet18 |"))
    engine, bare, ratio, gflop, mfu, inference = (cell.strip() for cell in row.split("|")[2:8])
    assert float(engine) > 0 and float(bare) > 0 and float(inference) > 0 and float(gflop) > 0
    assert float(ratio) == pytest.approx(float(engine) / float(bare), rel=0.1)  # the table rounds to 0.1
    assert mfu == "n/a (peak unknown)"  # no peak for a CPU
    assert "Loader ceiling" in doc.read_text()


def test_the_mfu_peak_is_known_by_gpu_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "NVIDIA H200")
    assert gpu.peak_flops("cuda") == (989e12, "NVIDIA H200")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Mystery GPU")
    assert gpu.peak_flops("cuda")[0] is None and gpu.peak_flops("cpu") == (None, "CPU")
