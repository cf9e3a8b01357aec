"""A read-only output folder through a real Kedro session: the run is refused before any node runs, and the
tracking database holds no MLflow run at all (kedro-mlflow never opened one).

The unit test in test_pre_run_checks.py checks the message of ``unwritable_outputs``; this one checks
the promise "no MLflow run" of the reliability table where it can break: the order of the start-up
hooks. Checked by mutation: with ``PreRunChecksHook.before_pipeline_run`` not ``tryfirst``,
kedro-mlflow opens its run first and this test fails on the run it finds in ``mlflow.db``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from mlflow import MlflowClient

from defect_pipeline.hooks.pre_run import PreRunChecksError
from tests.conftest import TINY, run_kedro

pytestmark = pytest.mark.slow


def _all_runs(project: Path) -> list:
    if not (project / "mlflow.db").exists():
        return []
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments) if experiments else []


def test_a_read_only_output_folder_refuses_the_run_and_leaves_no_mlflow_run(kedro_project: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    reports = kedro_project / "data/08_reporting"
    reports.mkdir(parents=True)
    real_access = os.access
    # the tests run as root, for whom chmod does not restrict: the permission answer is injected
    monkeypatch.setattr(os, "access", lambda path, mode, *args, **kwargs:
                        Path(path) != reports and real_access(path, mode, *args, **kwargs))
    # data + stage1: every input is made in the run (no missing-inputs refusal), so the folder check speaks
    with pytest.raises(PreRunChecksError, match=rf"{reports} is not writable, and [\w.]+ is written there"):
        run_kedro(kedro_project, pipelines=["data", "stage1"], params=TINY)
    assert _all_runs(kedro_project) == []
    assert [p for p in (kedro_project / "data").rglob("*") if p.is_file()] == []  # nothing written, no lock left
