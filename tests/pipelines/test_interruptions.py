"""`kedro run --pipeline=stage1` in a subprocess, terminated (SIGTERM) or killed (SIGKILL) mid-training:
the MLflow runs never stay RUNNING, no partial file sits at a checkpoint path, and the rerun resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import TINY, run_kedro

pytestmark = pytest.mark.slow

EPOCHS = 30
CLI_PARAMS = ",".join([
    "data.demo.images_per_class=6", "data.demo.good_images=6", "data.check.num_workers=0",
    "model.backbone=resnet18", "model.image_size=64", "model.decoder_channels=32",
    f"stage1.epochs={EPOCHS}", "stage1.batch_size=8", "stage1.warmup_epochs=0.0",
    "stage1.early_stopping.patience=100",
])
RESUME_PARAMS = {**TINY, "stage1": {"epochs": EPOCHS, "batch_size": 8, "warmup_epochs": 0.0,
                                    "early_stopping": {"patience": 100}}}


def _start(project: Path) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}", "OMP_NUM_THREADS": "1",
           "KEDRO_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
    return subprocess.Popen([sys.executable, "-m", "kedro", "run", "--pipeline=stage1", f"--params={CLI_PARAMS}"],
                            cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for_epochs(project: Path, process: subprocess.Popen, epochs: int, timeout: float = 240) -> None:
    """Until ``last.pt`` holds at least ``epochs`` epochs (the size grows as history is appended)."""
    last = project / "data/06_models/stage1/last.pt"
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"training ended before it was interrupted: {process.stderr.read()[-2000:]}")
        if last.exists():
            modified = last.stat().st_mtime_ns
            if modified != seen:
                seen, epochs = modified, epochs - 1
                if epochs <= 0:
                    return
        time.sleep(0.05)
    pytest.fail("no checkpoint appeared in time")


def _stage1_runs(project: Path) -> list:
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("defect_pipeline")
    return [r for r in client.search_runs([experiment.experiment_id])
            if r.data.tags.get("kedro.pipeline") == "stage1"]


def _resume_and_check(project: Path) -> None:
    folder = project / "data/06_models/stage1"
    assert not [p.name for p in folder.iterdir() if p.name not in ("best.pt", "last.pt") and p.is_file()
                and not p.name.startswith(".")]
    run_kedro(project, "stage1", params=RESUME_PARAMS)
    summary = json.loads((project / "data/08_reporting/stage1/training_summary.json").read_text())
    assert summary["resumed_from_epoch"] >= 2 and summary["epochs_run"] == EPOCHS
    assert not list(folder.glob(".*.tmp"))  # a temp file left by a killed write is cleaned up


def test_sigterm_ends_the_runs_killed_and_the_rerun_resumes(kedro_project: Path) -> None:
    run_kedro(kedro_project, "data", params=TINY)
    process = _start(kedro_project)
    _wait_for_epochs(kedro_project, process, 2)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) != 0
    runs = _stage1_runs(kedro_project)
    assert len(runs) == 2 and {r.info.status for r in runs} == {"KILLED"}  # parent and stage1 child
    _resume_and_check(kedro_project)


def test_sigkill_loses_at_most_one_epoch_and_the_rerun_resumes(kedro_project: Path) -> None:
    run_kedro(kedro_project, "data", params=TINY)
    process = _start(kedro_project)
    _wait_for_epochs(kedro_project, process, 2)
    process.kill()
    process.wait(timeout=60)
    # a killed process cannot close its MLflow runs; the checkpoints are whole files all the same
    (kedro_project / "data/06_models/stage1/.last.pt.interrupted.tmp").write_bytes(b"partial write")
    _resume_and_check(kedro_project)
