"""Two `kedro run`s at once in one project: the second is refused before any node runs and before kedro-mlflow
opens a run, naming the running one; a run that was killed does not leave the project locked.

Real processes throughout: a slow `kedro run --pipeline=stage1` subprocess trains while a second
`kedro run --pipeline=data` subprocess starts in the same project; then the first is killed
(SIGKILL, so nothing of it can clean up) and a third `kedro run` takes its lock over. Against the
code before the run lock, the second run was not refused: it rebuilt the data under the training
run (exit status 0, a second MLflow run of the data pipeline).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY, TINY_CLI_PARAMS, pipeline_runs, run_kedro, start_kedro, wait_for_checkpoint_epochs

pytestmark = pytest.mark.slow

LOCK = "data/.kedro_run.lock"
SLOW_STAGE1 = [*TINY_CLI_PARAMS, "stage1.epochs=30", "stage1.batch_size=4", "stage1.warmup_epochs=0.0",
               "stage1.early_stopping.patience=100"]


def _kedro_run(project: Path, pipeline: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}", "OMP_NUM_THREADS": "1",
           "KEDRO_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1", "COLUMNS": "1000"}  # rich: no wrapped lines
    return subprocess.run([sys.executable, "-m", "kedro", "run", f"--pipeline={pipeline}",
                           f"--params={','.join(TINY_CLI_PARAMS)}"], cwd=project, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=600)  # log and traceback in .stdout


def test_a_second_run_is_refused_while_one_runs_and_a_killed_run_leaves_no_lock(kedro_project: Path) -> None:
    run_kedro(kedro_project, "data", params=TINY)
    manifest = kedro_project / "data/03_primary/manifest.parquet"
    manifest_before = manifest.stat().st_mtime_ns
    first = start_kedro(kedro_project, "stage1", SLOW_STAGE1)
    try:
        wait_for_checkpoint_epochs(kedro_project, first, 1)  # the first run is training

        second = _kedro_run(kedro_project, "data")
        assert second.returncode != 0
        message = " ".join(second.stdout.split())
        assert f"PID {first.pid}" in message, second.stdout[-3000:]
        assert "kedro run --pipeline=stage1" in message and "started 20" in message
        assert "Wait for that run to end, or stop it" in message
        assert "Running node" not in second.stdout
        assert manifest.stat().st_mtime_ns == manifest_before  # nothing of the data pipeline ran again
        assert [r.info.status for r in pipeline_runs(kedro_project, "data")] == ["FINISHED"]  # no MLflow run
    finally:
        first.kill()  # SIGKILL: no hook, no exit handler of the first run gets to release anything
        first.wait(timeout=60)
    assert (kedro_project / LOCK).is_file()  # what a crashed run leaves behind

    third = _kedro_run(kedro_project, "data")
    assert third.returncode == 0, third.stdout[-3000:]
    message = " ".join(third.stdout.split())
    assert f"took over {kedro_project / LOCK}" in message and f"PID {first.pid}" in message
    assert "is no longer running" in message
    assert not (kedro_project / LOCK).exists()  # released when the run ended
    assert [r.info.status for r in pipeline_runs(kedro_project, "data")] == ["FINISHED", "FINISHED"]
