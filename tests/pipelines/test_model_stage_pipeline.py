"""``thresholds.model_stage`` through real Kedro sessions on the tiny demo: a run without stage 3 gets
thresholds, evaluation and export on stage 2's model.

Before ``model_stage`` the thresholds node read ``stage3.model`` only: this run failed at
thresholds with "no model package at data/06_models/stage3/model".
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import TINY, run_kedro

pytestmark = pytest.mark.slow


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _runs(project: Path) -> list:
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("defect_pipeline")
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def test_without_stage3_the_steps_after_training_use_stage2(kedro_project: Path) -> None:
    # the recipe calls stage 3 optional: kedro run --pipelines=data,stage1,stage2,thresholds,evaluate
    run_kedro(kedro_project, pipelines=["data", "stage1", "stage2", "thresholds", "evaluate"], params=TINY)
    assert not (kedro_project / "data/06_models/stage3/model").exists()
    stage2 = _json(kedro_project / "data/06_models/stage2/model/model.json")
    report = _json(kedro_project / "data/07_model_output/thresholds.json")
    assert report["model"]["stage"] == "stage2" and report["parameters"]["model_stage"] == "auto"
    assert report["model"]["weights_sha256"] == stage2["weights_sha256"]
    summary = _json(kedro_project / "data/08_reporting/evaluation/summary.json")
    assert summary["model"]["stage"] == "stage2" and summary["model"]["weights_sha256"] == stage2["weights_sha256"]
    runs = {r.info.run_name: r for r in _runs(kedro_project)}
    for name in ("thresholds", "evaluate"):  # joined to the run that trained stage2's model
        assert runs[name].data.tags["defect_pipeline.source_run_id"] == runs["stage2"].info.run_id
        assert runs[name].data.tags["defect_pipeline.source_stage"] == "stage2"

    run_kedro(kedro_project, "export", params=TINY)  # export follows the tuned model
    assert _json(kedro_project / "data/08_reporting/export/onnx_export.json")["weights_sha256"] == \
        stage2["weights_sha256"]

    # stage3 trains later: auto now takes it; a named stage pins stage2 again
    run_kedro(kedro_project, "stage3", params=TINY)
    run_kedro(kedro_project, "thresholds", params=TINY)
    assert _json(kedro_project / "data/07_model_output/thresholds.json")["model"]["stage"] == "stage3"
    run_kedro(kedro_project, "thresholds", params={**TINY, "thresholds": {"model_stage": "stage2"}})
    report = _json(kedro_project / "data/07_model_output/thresholds.json")
    assert report["model"]["stage"] == "stage2" and report["parameters"]["model_stage"] == "stage2"
    assert _json(kedro_project / "data/06_models/tuned/model.json")["weights_sha256"] == stage2["weights_sha256"]
