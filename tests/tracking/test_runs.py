"""Tracking helpers: readable stage parameters, reproducibility tags, the fast server check."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest

from defect_pipeline.tracking.runs import (
    TrackingUnavailableError,
    check_tracking_uri,
    git_info,
    numeric_metrics,
    stage_params,
)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_stage_params_are_flat_and_readable() -> None:
    params = stage_params({"backbone": "convnext_atto", "image_size": 64, "crop": {"scale": 0.5}},
                          {"lr": 1e-3, "backbone_lr": None, "loss": {"weighting": "uncertainty", "alpha": 1.0}},
                          runtime={"cpu_threads": 1},
                          augmentation={"recipe": [{"name": "HorizontalFlip", "p": 0.5}, {"name": "VerticalFlip"}]})
    assert params["backbone"] == "convnext_atto" and params["crop.scale"] == 0.5 and "crop" not in params
    assert params["lr_head"] == 1e-3 and params["lr_backbone"] == 1e-3  # null backbone_lr means "same as lr"
    assert params["loss.weighting"] == "uncertainty" and params["loss.alpha"] == 1.0
    assert params["runtime.cpu_threads"] == 1
    assert params["augmentation"] == "HorizontalFlip,VerticalFlip"


def test_numeric_metrics_drop_text_booleans_and_nan() -> None:
    row = {"epoch": 3, "val_loss": 0.5, "lr_head": 1e-3, "note": "x", "flag": True, "val_iou": float("nan")}
    assert numeric_metrics(row) == {"val_loss": 0.5, "lr_head": 1e-3}


def test_git_info_reports_commit_and_dirty_flag(tmp_path: Path) -> None:
    assert git_info(tmp_path)["git.commit"].startswith("unknown")
    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)
    git("init", "-q")
    (tmp_path / "a.txt").write_text("1")
    git("add", "a.txt")
    git("commit", "-qm", "one")
    clean = git_info(tmp_path)
    assert len(clean["git.commit"]) == 40 and clean["git.dirty"] == "false"
    (tmp_path / "a.txt").write_text("2")
    assert git_info(tmp_path)["git.dirty"] == "true"


def test_a_closed_port_fails_fast_with_the_uri_and_what_to_do() -> None:
    uri = f"http://127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    with pytest.raises(TrackingUnavailableError, match=r"unreachable.*MLFLOW_TRACKING_URI"):
        check_tracking_uri(uri, timeout=2.0)
    assert time.monotonic() - started < 5.0


def test_a_sqlite_uri_in_a_missing_folder_is_named(tmp_path: Path) -> None:
    check_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(TrackingUnavailableError, match="does not exist"):
        check_tracking_uri(f"sqlite:///{tmp_path / 'nope' / 'mlflow.db'}")


@pytest.mark.parametrize(("rows_by_step", "expected"), [(False, [1, 1]), (True, [4, 6])])
def test_history_rows_are_logged_at_the_epoch_or_at_the_optimizer_step(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rows_by_step: bool, expected: list[int]) -> None:
    """Two validations in epoch 1 (``val_every_n_steps``) keep their order in MLflow only at step = optimizer
    step; by default (one row per epoch) the MLflow step stays the epoch. Failed before ``rows_by_step``
    existed (an unexpected keyword)."""
    import mlflow

    from defect_pipeline.tracking.runs import MlflowTrainingLogger

    previous, uri = mlflow.get_tracking_uri(), f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # set_tracking_uri writes it too: restored after the test
    mlflow.set_tracking_uri(uri)
    try:
        mlflow.set_experiment("rows_by_step")
        with mlflow.start_run() as active:
            training_logger = MlflowTrainingLogger(rows_by_step=rows_by_step)
            training_logger.log_epoch(1, 4, {"val_loss": 0.9})
            training_logger.log_epoch(1, 6, {"val_loss": 0.7})
        history = mlflow.MlflowClient().get_metric_history(active.info.run_id, "val_loss")
    finally:
        mlflow.set_tracking_uri(previous)
    assert sorted((m.step, m.value) for m in history) == sorted(zip(expected, [0.9, 0.7], strict=True))


def test_a_run_records_its_machine_and_the_best_checkpoints_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    """What the ``ablation`` benchmark reads per run: the machine (tag) and, for a stage validated every N
    steps, the optimizer step of its best checkpoint (metric ``best_step``). Neither was recorded before."""
    import mlflow

    from defect_pipeline.tracking.runs import log_stage_result, reproducibility_tags
    from defect_pipeline.util import describe_machine

    tags = reproducibility_tags(project_path=tmp_path, env=None, pipeline="__default__", argv=["kedro", "run"])
    assert tags["defect_pipeline.machine"] == describe_machine()
    previous, uri = mlflow.get_tracking_uri(), f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    try:
        mlflow.set_experiment("best_step")
        with mlflow.start_run() as active:
            log_stage_result({"best_epoch": 1, "best_step": 100, "epochs_run": 2})
        metrics = mlflow.MlflowClient().get_run(active.info.run_id).data.metrics
    finally:
        mlflow.set_tracking_uri(previous)
    assert metrics["best_step"] == 100 and metrics["best_epoch"] == 1


def test_the_stage_run_is_tagged_with_what_each_auto_setting_resolved_to(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``auto.*`` tags (value and reason) for settings asked as ``auto``, none for explicit ones. Failed before
    ``auto`` settings existed (no such tag)."""
    import mlflow

    from defect_pipeline.ml.plan import AUTO, Machine, fingerprint, plan_stage
    from defect_pipeline.tracking.runs import log_stage_result
    from tests.ml.test_plan import manifest

    plan = plan_stage(fingerprint(manifest({"good": 300, "crack": 20})), Machine("cpu", 2, 2**33),
                      stage_name="stage2", stride=32, backbone="convnext_atto",
                      requested={"image_size": AUTO, "batch_size": 8, "epochs": AUTO, "sampler": AUTO,
                                 "class_weights": AUTO})
    previous, uri = mlflow.get_tracking_uri(), f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    try:
        mlflow.set_experiment("auto_tags")
        with mlflow.start_run() as active:
            log_stage_result({"auto": plan.to_dict()})
        tags = mlflow.MlflowClient().get_run(active.info.run_id).data.tags
    finally:
        mlflow.set_tracking_uri(previous)
    assert tags["auto.model.image_size"] == "192" and "200 x 200" in tags["auto.model.image_size.reason"]
    assert tags["auto.stage.sampler"] == "uniform" and tags["auto.stage.loss.class_weights"] == "sqrt"
    assert "auto.stage.epochs" in tags and "auto.stage.batch_size" not in tags  # 8 was set explicitly
