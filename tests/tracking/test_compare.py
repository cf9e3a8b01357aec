"""The run comparison on a synthetic search_runs table (no MLflow server needed)."""

from __future__ import annotations

import pandas as pd

from defect_pipeline.tracking.compare import compare_runs


def _runs() -> pd.DataFrame:
    base = {"tags.defect_pipeline.kind": "stage", "status": "FINISHED", "tags.mlflow.parentRunId": "p"}
    return pd.DataFrame([
        {**base, "run_id": "a" * 32, "start_time": pd.Timestamp("2026-01-01"), "tags.defect_pipeline.stage": "stage1",
         "params.backbone": "resnet18", "metrics.best_val_loss": 0.40, "metrics.best_val_combined_score": 0.61,
         "metrics.train_samples_per_s": 50.0, "metrics.parameters_total": 14e6},
        {**base, "run_id": "b" * 32, "start_time": pd.Timestamp("2026-01-02"), "tags.defect_pipeline.stage": "stage2",
         "params.backbone": "convnext_atto", "metrics.best_val_loss": 0.30, "metrics.best_val_combined_score": 0.55,
         "metrics.train_samples_per_s": 20.0, "metrics.parameters_total": 4e6, "metrics.test_combined_score": 0.5},
        {**base, "run_id": "c" * 32, "start_time": pd.Timestamp("2026-01-03"), "tags.defect_pipeline.stage": "stage1",
         "status": "FAILED", "params.backbone": "swin", "metrics.best_val_loss": 0.01},
        {"run_id": "d" * 32, "start_time": pd.Timestamp("2026-01-04"), "status": "FINISHED",
         "tags.defect_pipeline.stage": None},  # a parent run: not a stage
    ])


def test_one_row_per_finished_stage_run_and_the_winner_of_each_criterion() -> None:
    result = compare_runs(_runs(), statuses=["FINISHED"], experiment="exp", tracking_uri="sqlite:///x.db")
    assert list(result.table["run_id"]) == ["b" * 32, "a" * 32]  # newest first; failed and parent runs left out
    assert list(result.table["parameters_M"]) == [4.0, 14.0]
    best = result.best.set_index("criterion")
    assert best.loc["lowest validation loss", "backbone"] == "convnext_atto"
    assert best.loc["best validation combined score", "backbone"] == "resnet18"
    assert best.loc["fastest training (samples/s)", "backbone"] == "resnet18"
    assert best.loc["smallest model (parameters)", "backbone"] == "convnext_atto"
    assert best.loc["best test combined score", "run_id"] == "b" * 32
    assert "best test mIoU" not in best.index  # no run has it
    assert "| lowest validation loss |" in result.markdown and "test_combined_score" in result.markdown
    assert result.figure.axes


def test_stage_filter_and_failed_runs_on_request() -> None:
    result = compare_runs(_runs(), stages=["stage1"], statuses=["FINISHED", "FAILED"])
    assert list(result.table["backbone"]) == ["swin", "resnet18"]


def test_an_empty_experiment_says_what_to_run() -> None:
    result = compare_runs(pd.DataFrame())
    assert result.table.empty and result.best.empty
    assert "kedro run --pipeline=stage1" in result.markdown
