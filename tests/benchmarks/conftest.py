"""Fabricated MLflow stores shaped like a ``kedro run``: a ``__default__`` parent run, stage child runs with
per-epoch metrics, an ``evaluate`` child run with the ``test_*`` metrics. Written with MLflow's own client
into a sqlite file (a migrated empty store is made once per session and copied), so the benchmark's
read-only reader is tested against MLflow's real schema."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def _empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow_template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()  # creates and migrates the schema
    return path


def _stage_run(client: Any, experiment: str, parent: str, name: str, stage: dict[str, Any]) -> str:
    tags = {"mlflow.parentRunId": parent, "mlflow.runName": name, "defect_pipeline.kind": "stage",
            "defect_pipeline.stage": name, **stage.get("tags", {})}
    run = client.create_run(experiment, tags=tags, run_name=name).info.run_id
    for key, value in {"val_every_n_steps": "null", **stage.get("params", {})}.items():
        client.log_param(run, key, value)
    for step, row in enumerate(stage["history"], start=1):
        step = row.get("step", step)
        for key, value in row.items():
            if key != "step":
                client.log_metric(run, key, value, step=step)
    for key, value in stage.get("final", {}).items():
        client.log_metric(run, key, value)
    client.set_terminated(run, "FINISHED")
    return run


@pytest.fixture
def record_run(_empty_store: Path) -> Callable[..., dict[str, Any]]:
    """``record_run(project, params=..., stages={"stage1": {...}}, evaluation={...}, tags=..., status=...)``:
    one ``kedro run`` as the project's ``mlflow.db`` records it; returns the run ids (``parent``, each
    stage's name, ``evaluation``)."""
    from mlflow import MlflowClient

    def record(project: Path, *, params: dict[str, str], stages: dict[str, dict[str, Any]],
               evaluation: dict[str, Any] | None = None, tags: dict[str, str] | None = None,
               status: str = "FINISHED", pipeline: str = "__default__") -> dict[str, Any]:
        project.mkdir(parents=True, exist_ok=True)
        db = project / "mlflow.db"
        if not db.exists():
            shutil.copy(_empty_store, db)
        client = MlflowClient(tracking_uri=f"sqlite:///{db}")
        experiment = client.get_experiment_by_name("defect_pipeline")
        experiment = experiment.experiment_id if experiment else client.create_experiment("defect_pipeline")
        parent = client.create_run(experiment, run_name=pipeline,
                                   tags={"kedro.pipeline": pipeline, **(tags or {})}).info.run_id
        for key, value in params.items():
            client.log_param(parent, key, value)
        ids: dict[str, Any] = {"parent": parent}
        for name, stage in stages.items():
            ids[name] = _stage_run(client, experiment, parent, name, stage)
        if evaluation is not None:
            source = ids[evaluation.get("source", list(stages)[-1])]
            run = client.create_run(experiment, run_name="evaluate", tags={
                "mlflow.parentRunId": parent, "defect_pipeline.kind": "evaluation",
                "defect_pipeline.source_run_id": source}).info.run_id
            client.log_param(run, "evaluation.split", evaluation.get("split", "test"))
            for key, value in evaluation["metrics"].items():
                client.log_metric(run, key, value, step=0)
            client.set_terminated(run, "FINISHED")
            ids["evaluation"] = run
        if status != "RUNNING":
            client.set_terminated(parent, status)
        return ids

    return record
