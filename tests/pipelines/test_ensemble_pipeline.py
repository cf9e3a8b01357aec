"""`kedro run --pipeline=ensemble` on two tiny models with different backbones (one given by its MLflow
run id), then inference with the tuned ensemble.json."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from tests.conftest import TINY, copy_project, run_kedro

pytestmark = pytest.mark.slow


def test_an_ensemble_of_two_backbones_is_tuned_compared_and_used_for_inference(
        tiny_default_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = copy_project(tiny_default_run, tmp_path / "project", monkeypatch)
    # a second model with another backbone: stage1 retrained on convnext_atto
    other = {**TINY, "model": {**TINY["model"], "backbone": "convnext_atto"},
             "stage1": {**TINY["stage1"], "resume": False}}
    run_kedro(project, "stage1", params=other)
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("defect_pipeline")
    stage3_run = client.search_runs([experiment.experiment_id], "tags.`defect_pipeline.stage` = 'stage3'")[0]
    members = [stage3_run.info.run_id, str(project / "data/06_models/stage1/model")]

    params = {**TINY, "ensemble": {"members": members, "tta": ["hflip"], "batch_size": 8}}
    run_kedro(project, "ensemble", params=params)

    spec = json.loads((project / "data/06_models/ensemble/ensemble.json").read_text())
    assert [m["backbone"] for m in spec["members"]] == ["resnet18", "convnext_atto"]
    assert spec["final_variant"] == "ensemble + TTA" and spec["weights"] == [0.5, 0.5]
    assert all(v["thresholds"]["source"].startswith("tuned on val") for v in spec["variants"].values())
    # each variant's thresholds were checked against the fixed point; a part kept fixed says so in its source
    tuning = json.loads((project / "data/08_reporting/ensemble/thresholds.json").read_text())
    for name, variant in tuning["variants"].items():
        assert set(variant["checks"]) == {"image", "pixel"}
        assert variant["status"] == "tuned" or variant["status"] in spec["variants"][name]["thresholds"]["source"]
    summary = json.loads((project / "data/08_reporting/ensemble/summary.json").read_text())
    assert [row["variant"] for row in summary["variants"]] == \
        ["1:resnet18", "2:convnext_atto", "ensemble", "ensemble + TTA"]
    for row in summary["variants"]:
        assert row["images_per_s"] > 0 and 0 <= row["fixed_combined_score"] <= 1 and 0 <= row["tuned_miou"] <= 1
    report = (project / "data/08_reporting/ensemble/report.md").read_text()
    assert "| ensemble + TTA | hflip |" in report and "fixed (0.5) → tuned" in report

    runs = {r.info.run_name: r for r in client.search_runs(
        [experiment.experiment_id], "tags.`kedro.pipeline` = 'ensemble'")}
    evaluated = runs["evaluate_ensemble"]
    assert evaluated.info.status == "FINISHED"
    assert stage3_run.info.run_id in evaluated.data.params["ensemble.members"]  # MLflow records the members
    assert "ensemble_TTA.test_tuned_combined_score" in evaluated.data.metrics
    assert "1_resnet18.test_fixed_miou" in evaluated.data.metrics

    raw = json.loads((project / "data/01_raw/raw_source.json").read_text())["raw_root"]
    run_kedro(project, "inference", params={**TINY, "inference": {
        "input_dir": raw, "checkpoint": str(project / "data/06_models/ensemble/ensemble.json")}})
    predictions = pd.read_csv(project / "data/07_model_output/predictions.csv")
    assert len(predictions) > 0 and set(predictions["status"]) == {"ok"}
    assert predictions["thresholds"].str.contains("ensemble variant 'ensemble \\+ TTA'").all()
    inference = json.loads((project / "data/07_model_output/inference_summary.json").read_text())
    assert inference["model"]["variant"] == "ensemble + TTA" and inference["model"]["tta"] == ["hflip"]

    # a plain list of models also predicts (equal weights, untuned thresholds, said so in every row)
    run_kedro(project, "inference", params={**TINY, "inference": {"input_dir": raw, "checkpoint": members}})
    predictions = pd.read_csv(project / "data/07_model_output/predictions.csv")
    assert set(predictions["status"]) == {"ok"} and predictions["thresholds"].str.contains("not tuned").all()
