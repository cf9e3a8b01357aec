"""MLflow end to end: a tiny `kedro run` is traceable (parent + stage child runs, metrics per epoch,
artifacts, tags, a loadable pyfunc model); failures end FAILED; a dead server fails fast;
`compare_runs` tabulates two backbones."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from defect_pipeline.data.manifest import manifest_hash
from defect_pipeline.ml.checkpoint import CheckpointError
from defect_pipeline.ml.serving import decode_mask, encode_image
from defect_pipeline.tracking.runs import TrackingUnavailableError
from tests.conftest import TINY, TINY_STAGE, run_kedro

pytestmark = pytest.mark.slow

STAGES = ("stage1", "stage2", "stage3")


def _client(project: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")


def _runs(project: Path) -> list:
    client = _client(project)
    experiment = client.get_experiment_by_name("defect_pipeline")
    assert experiment is not None, "kedro-mlflow did not create the experiment named in mlflow.yml"
    return client.search_runs([experiment.experiment_id])


@pytest.fixture(scope="module")
def tracked_run(tiny_default_run: Path):
    """The tiny default `kedro run` shared by the session: its parent run and child runs by name."""
    runs = _runs(tiny_default_run)
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    return tiny_default_run, parent, children


def test_one_parent_run_and_one_child_run_per_stage(tracked_run) -> None:
    project, parent, children = tracked_run
    assert len(_runs(project)) == 7
    assert parent.info.status == "FINISHED" and parent.info.run_name == "__default__"
    assert sorted(children) == ["evaluate", "predict", *STAGES, "thresholds"]
    for stage, child in ((name, children[name]) for name in STAGES):
        assert child.info.status == "FINISHED"
        assert child.data.tags["defect_pipeline.stage"] == stage
        assert child.data.params["backbone"] == "resnet18"
        assert child.data.params["decoder"] == "auto" and child.data.params["image_size"] == "64"
        assert {"lr_head", "lr_backbone", "loss.weighting", "epochs", "batch_size", "freeze_backbone",
                "dropout.rate", "augmentation", "seed"} <= set(child.data.params)
    assert children["stage1"].data.params["freeze_backbone"] == "True"
    # what "auto" resolved to (precision depends on the CPU: bf16 only where measured faster)
    summary = json.loads((project / "data/08_reporting/stage1/training_summary.json").read_text())
    assert children["stage1"].data.tags["decoder"] == "fpn" == summary["decoder"]
    assert children["stage1"].data.tags["precision"] == summary["precision"] in ("fp32", "bf16")
    # the demo's 64 px images at model.image_size 64: input_mode auto stays on whole resized images
    assert children["stage1"].data.tags["input_mode"] == summary["input_mode"] == "resize"
    assert summary["input_plan"]["requested"] == "auto" and "does not shrink" in summary["input_plan"]["reason"]
    package_meta = json.loads((project / "data/06_models/stage1/model/model.json").read_text())
    assert package_meta["input_mode"] == "resize" and package_meta["image_size"] == 64
    assert children["stage3"].data.params["loss.weighting"] == "uncertainty"
    # the parent keeps kedro-mlflow's flattened parameters of every block
    assert parent.data.params["model.backbone"] == "resnet18"


def test_a_successful_default_run_leaves_every_run_finished(tracked_run) -> None:
    """Parent and every child run: a node's outputs (inference_summary's ``status`` counts) never fail its run."""
    project, _, _ = tracked_run
    statuses = {run.info.run_name: run.info.status for run in _runs(project)}
    assert statuses == {name: "FINISHED" for name in ("__default__", *STAGES, "thresholds", "evaluate", "predict")}


def test_per_epoch_metrics_have_their_steps(tracked_run) -> None:
    project, _, children = tracked_run
    client = _client(project)
    stage1 = children["stage1"].info.run_id
    for key in ("train_loss", "val_loss", "val_combined_score", "val_miou", "val_macro_f1", "lr_head", "dropout",
                "loss_weight_alpha", "train_samples_per_s", "val_samples_per_s", "epoch_seconds", "peak_rss_mb"):
        assert [m.step for m in client.get_metric_history(stage1, key)] == [1, 2], key
    history = pd.read_csv(project / "data/08_reporting/stage1/history.csv")
    logged = [m.value for m in client.get_metric_history(stage1, "val_loss")]
    assert logged == pytest.approx(history["val_loss"].tolist())
    metrics = children["stage1"].data.metrics
    assert metrics["best_val_loss"] == pytest.approx(history["val_loss"].min())
    assert metrics["best_val_combined_score"] == pytest.approx(history["val_combined_score"].max())
    assert metrics["parameters_total"] > metrics["parameters_trainable"] > 0  # frozen backbone
    # per optimizer step: dropout, LR and loss, with the global step
    step_dropout = client.get_metric_history(stage1, "step/dropout")
    steps = pd.read_csv(project / "data/08_reporting/stage1/steps.csv")
    assert [m.step for m in step_dropout] == steps["step"].tolist() == list(range(1, len(steps) + 1))
    assert {"step/lr_head", "step/train_loss"} <= set(children["stage1"].data.metrics)
    # stage3 learns its task uncertainties: they are logged per epoch
    stage3 = children["stage3"].data.metrics
    assert {"loss_weight_log_var_cls", "loss_weight_log_var_seg"} <= set(stage3)


def test_artifacts_are_in_the_run_they_belong_to(tracked_run) -> None:
    project, parent, children = tracked_run
    client = _client(project)

    def files(run_id: str, path: str) -> set[str]:
        return {a.path for a in client.list_artifacts(run_id, path)}

    assert {"data/data_report.json", "data/data_report.md", "data/quarantine.csv"} <= files(parent.info.run_id, "data")
    assert "augmentation/augmentation_preview.png" in files(parent.info.run_id, "augmentation")
    for stage, child in ((name, children[name]) for name in STAGES):
        assert {f"{stage}/history.csv", f"{stage}/curves.png", f"{stage}/training_summary.json",
                f"{stage}/steps.csv", f"{stage}/diagnosis.json", f"{stage}/diagnosis.md"} <= \
            files(child.info.run_id, stage)
    summary = json.loads(Path(mlflow.artifacts.download_artifacts(
        run_id=children["stage2"].info.run_id, artifact_path="stage2/training_summary.json",
        tracking_uri=f"sqlite:///{project / 'mlflow.db'}")).read_text())
    assert summary["init_from"].endswith("stage1/best.pt")


def test_tags_make_the_run_reproducible(tracked_run) -> None:
    project, parent, children = tracked_run
    expected_hash = manifest_hash(pd.read_parquet(project / "data/03_primary/manifest.parquet"))
    for run in (parent, *children.values()):  # stages, thresholds, evaluate and predict alike
        tags = run.data.tags
        assert len(tags["git.commit"]) == 40 and tags["git.dirty"] in ("true", "false")
        assert tags["kedro.pipeline"] == "__default__"
        assert tags["kedro.env"] == "local (default)"
        assert tags["command_line"]
        assert tags["defect_pipeline.manifest_hash"] == expected_hash


def test_the_logged_model_loads_with_pyfunc_and_predicts(tracked_run) -> None:
    project, _, children = tracked_run
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model(f"runs:/{children['stage3'].info.run_id}/model")
    manifest = pd.read_parquet(project / "data/03_primary/manifest.parquet")
    root = Path(json.loads((project / "data/01_raw/raw_source.json").read_text())["raw_root"])
    if not root.is_absolute():
        root = project / root
    paths = [str(root / p) for p in manifest["image_path"].head(3)]
    broken = project / "broken.png"
    broken.write_bytes(b"not an image")
    out = model.predict(pd.DataFrame({"path": [*paths, str(broken)]}))
    assert list(out["status"]) == ["ok", "ok", "ok", "error"]
    assert "broken.png" in out.loc[3, "error"]
    classes = ["good", "crack", "scratch", "spot"]
    assert {f"score_{c}" for c in classes} <= set(out.columns)
    ok = out[out["status"] == "ok"]
    assert set(ok["label"]) <= set(classes)
    assert np.allclose(ok[[f"score_{c}" for c in classes]].sum(axis=1), 1.0, atol=1e-4)
    assert all(decode_mask(mask, "png").shape == (64, 64) for mask in ok["mask"])  # base64 PNG by default
    assert (ok["thresholds"].str.startswith("default")).all()
    grey = encode_image(np.zeros((40, 50), dtype=np.uint8))  # image bytes instead of a path
    images = model.predict(pd.DataFrame({"image": [grey, grey]}), params={"mask_format": "array"})
    assert len(images) == 2 and images["mask"].iloc[0].shape == (40, 50)
    arrays = model.unwrap_python_model().predict(None, np.zeros((2, 40, 50), dtype=np.uint8))  # arrays in-process
    assert len(arrays) == 2 and decode_mask(arrays["mask"].iloc[0]).shape == (40, 50)


def test_a_failing_node_leaves_parent_and_stage_runs_failed(kedro_project: Path) -> None:
    run_kedro(kedro_project, "data", params=TINY)
    missing = kedro_project / "missing.pt"  # a file no pipeline makes: the stage node itself fails on it
    with pytest.raises(CheckpointError, match="missing.pt does not exist"):
        run_kedro(kedro_project, "stage2", params={**TINY, "stage2": {**TINY["stage2"], "init_from": str(missing)}})
    failed = [r for r in _runs(kedro_project) if r.data.tags.get("kedro.pipeline") == "stage2"]
    parent = next(r for r in failed if "mlflow.parentRunId" not in r.data.tags)
    child = next(r for r in failed if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id)
    assert len(failed) == 2 and child.info.run_name == "stage2"
    assert parent.info.status == "FAILED" and child.info.status == "FAILED"
    assert mlflow.active_run() is None


def test_an_unreachable_tracking_server_fails_fast_before_anything_runs(kedro_project: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(TrackingUnavailableError, match=rf"127\.0\.0\.1:{port} is unreachable"):
        run_kedro(kedro_project, "data", params=TINY)
    assert time.monotonic() - started < 30
    assert not (kedro_project / "data").exists()


def test_compare_runs_tabulates_two_backbones(kedro_project: Path) -> None:
    run_kedro(kedro_project, "data", params=TINY)
    run_kedro(kedro_project, "stage1", params=TINY)
    other = {**TINY, "model": {**TINY["model"], "backbone": "convnext_atto"},
             "stage1": {**TINY_STAGE, "resume": False}}
    run_kedro(kedro_project, "stage1", params=other)
    run_kedro(kedro_project, "compare_runs")

    out = kedro_project / "data/08_reporting/comparison"
    table = pd.read_csv(out / "run_comparison.csv")
    assert sorted(table["backbone"]) == ["convnext_atto", "resnet18"]
    assert list(table["stage"]) == ["stage1", "stage1"]
    assert table["parameters_M"].notna().all() and table["train_samples_per_s"].gt(0).all()
    best = pd.read_csv(out / "best_per_criterion.csv").set_index("criterion")
    smallest = table.loc[table["parameters_M"].idxmin(), "backbone"]
    assert best.loc["smallest model (parameters)", "backbone"] == smallest == "convnext_atto"
    lowest = table.loc[table["best_val_loss"].idxmin(), "run_id"]
    assert best.loc["lowest validation loss", "run_id"] == lowest
    markdown = (out / "run_comparison.md").read_text()
    assert "convnext_atto" in markdown and "resnet18" in markdown and "Best run per criterion" in markdown
    assert (out / "run_comparison.png").stat().st_size > 0
    compare_run = next(r for r in _runs(kedro_project) if r.data.tags.get("kedro.pipeline") == "compare_runs")
    assert "comparison/run_comparison.csv" in {a.path for a in _client(kedro_project).list_artifacts(
        compare_run.info.run_id, "comparison")}
