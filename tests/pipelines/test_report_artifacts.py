"""A default `kedro run` (the shared tiny one) leaves the reports people look at — evaluation plots, validation
previews, its log file — on disk and as MLflow artifacts of the run they belong to.

Against the code before the change this fails: none of these files existed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from defect_pipeline.hooks.run_log import LOG_FILE_TAG

pytestmark = pytest.mark.slow

PNG = b"\x89PNG"


def test_a_default_run_keeps_its_plots_previews_and_log_file_on_disk_and_in_mlflow(tiny_default_run: Path) -> None:
    project = tiny_default_run
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("defect_pipeline").experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    children = {r.info.run_name: r for r in runs if "mlflow.parentRunId" in r.data.tags}

    def artifacts(run, folder: str) -> set[str]:
        return {a.path for a in client.list_artifacts(run.info.run_id, folder)}

    # evaluation: normalised and pixel confusion matrices, per-class bars (files, MLflow, summary, report)
    evaluation = project / "data/08_reporting/evaluation"
    names = ("confusion_matrix.png", "pixel_confusion_matrix.png", "per_class_metrics.png")
    for name in names:
        assert (evaluation / name).read_bytes().startswith(PNG), name
    assert {f"evaluation/{name}" for name in names} <= artifacts(children["evaluate"], "evaluation")
    matrices = json.loads((evaluation / "summary.json").read_text())["confusion_matrices"]
    assert matrices["pixel"]["classes"] == ["background", "crack", "scratch", "spot"]
    assert "## Confusion matrices (tuned thresholds)" in (evaluation / "report.md").read_text()

    # validation previews: every 5 epochs (default) and when each stage ends (stage1 trains 2 epochs here)
    for stage, epochs in (("stage1", 2), ("stage2", 1), ("stage3", 1)):
        previews = sorted(p.name for p in (project / "data/08_reporting" / stage).glob("val_preview_epoch*.png"))
        assert previews == [f"val_preview_epoch{epochs}.png"], stage
        assert f"{stage}/val_preview_epoch{epochs}.png" in artifacts(children[stage], stage)

    # the run's log file, also in the parent run
    (log_file,) = (project / "logs").glob("*_default.log")
    text = log_file.read_text()
    assert "stage1: MLflow child run" in text and "inference:" in text
    assert text.rstrip().endswith("run finished; log closed")
    assert parent.data.tags[LOG_FILE_TAG] == str(log_file)
    assert artifacts(parent, "logs") == {f"logs/{log_file.name}"}
    logged = client.download_artifacts(parent.info.run_id, f"logs/{log_file.name}")
    assert Path(logged).read_text() == text
