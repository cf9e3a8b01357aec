"""`kedro run --pipeline=stage1` in a subprocess, terminated (SIGTERM) or killed (SIGKILL) mid-training:
the MLflow runs never stay RUNNING, no partial file sits at a checkpoint path, and the rerun resumes."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
from tests.conftest import TINY, TINY_CLI_PARAMS, pipeline_runs, run_kedro, start_kedro, wait_for_checkpoint_epochs

pytestmark = pytest.mark.slow

EPOCHS = 30
CLI_PARAMS = [
    *TINY_CLI_PARAMS,
    f"stage1.epochs={EPOCHS}", "stage1.batch_size=8", "stage1.warmup_epochs=0.0",
    "stage1.early_stopping.patience=100",
]
RESUME_PARAMS = {**TINY, "stage1": {"epochs": EPOCHS, "batch_size": 8, "warmup_epochs": 0.0,
                                    "early_stopping": {"patience": 100}}}


def _start(project: Path) -> subprocess.Popen:
    return start_kedro(project, "stage1", CLI_PARAMS)


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
    wait_for_checkpoint_epochs(kedro_project, process, 2)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) != 0
    runs = pipeline_runs(kedro_project, "stage1")
    assert len(runs) == 2 and {r.info.status for r in runs} == {"KILLED"}  # parent and stage1 child
    _resume_and_check(kedro_project)


def test_sigkill_loses_at_most_one_epoch_and_the_rerun_resumes(kedro_project: Path) -> None:
    run_kedro(kedro_project, "data", params=TINY)
    process = _start(kedro_project)
    wait_for_checkpoint_epochs(kedro_project, process, 2)
    process.kill()
    process.wait(timeout=60)
    # a killed process cannot close its MLflow runs; the checkpoints are whole files all the same
    (kedro_project / "data/06_models/stage1/.last.pt.interrupted.tmp").write_bytes(b"partial write")
    _resume_and_check(kedro_project)
