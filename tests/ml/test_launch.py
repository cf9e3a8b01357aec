"""``launch`` on several CPU processes hands rank 0's value back, however large.

Shown failing first: Lightning Fabric returned the value through a multiprocessing queue that it reads only
after joining the workers, so a value larger than the pipe buffer (64 KiB) blocked rank 0 at exit and the
launcher waited forever. A NEU-Seg stage on 2 processes hung that way after its last epoch (its result holds
every step's row). The launch runs in a child interpreter with a time limit, so the old behaviour fails the
test instead of hanging the suite.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from defect_pipeline.ml.distributed import Processes

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = """
from defect_pipeline.ml.distributed import launch, resolve_trainer
from tests.ml.test_launch import large_value
settings = resolve_trainer(accelerator="cpu", devices=2, strategy="auto", num_nodes=1, precision="fp32")
value = launch(settings, large_value, 3)
print("rank", value["rank"], "world", value["world"], "bytes", len(value["blob"]), "k", value["k"])
"""


def large_value(processes: Processes, k: int) -> dict:
    """A value of 2 MiB that names the rank it came from (module level: spawned workers import it)."""
    return {"rank": processes.rank, "world": processes.world_size, "blob": bytes(2 * 1024 * 1024), "k": k}


def test_rank_zero_s_large_value_comes_back_from_two_processes() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rank 0 world 2 bytes 2097152 k 3" in done.stdout
