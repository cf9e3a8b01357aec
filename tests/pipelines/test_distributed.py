"""Distributed training through the real entry point: `kedro run --pipeline=stage1` with
`trainer.devices=2` on CPU (two gloo processes launched by Lightning Fabric), interrupted, then resumed."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from defect_pipeline.ml.augment import build_transform
from defect_pipeline.ml.checkpoint import CheckpointStore
from defect_pipeline.ml.dataset import ManifestDataset, create_dataloader
from defect_pipeline.ml.metrics import MultitaskMetrics
from defect_pipeline.ml.package import ModelPackage
from tests.conftest import TINY, TINY_CLI_PARAMS, pipeline_runs, run_kedro, start_kedro, wait_for_checkpoint_epochs

pytestmark = pytest.mark.slow

EPOCHS = 40
PARAMS = [
    *TINY_CLI_PARAMS,
    f"stage1.epochs={EPOCHS}", "stage1.batch_size=4", "stage1.warmup_epochs=0.0",
    "stage1.early_stopping.patience=100",
    "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=fp32",
]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def _whole_val_set_metrics(project: Path, checkpoint: dict) -> dict[str, float]:
    """The checkpoint's metrics over the whole validation set, in this one process."""
    package = ModelPackage.from_checkpoint(checkpoint, source="last.pt")
    model = package.build_model().eval()
    manifest = pd.read_parquet(project / "data/03_primary/manifest.parquet")
    raw_root = json.loads((project / "data/01_raw/raw_source.json").read_text())["raw_root"]
    val_set = ManifestDataset(manifest, root=raw_root, split="val", labels=package.labels, seg_mode="multiclass",
                              transform=build_transform([], image_size=64, train=False))
    metrics = MultitaskMetrics(package.labels, "multiclass")
    with torch.no_grad():
        for batch in create_dataloader(val_set, batch_size=4, shuffle=False, num_workers=0, seed=0):
            out = model(batch["image"])
            metrics.update(out.seg_logits, out.cls_logits, batch["mask"], batch["label"])
    return {f"val_{k}": v for k, v in metrics.compute().items()}


def test_two_cpu_processes_train_stage1_as_one_run_and_resume(kedro_project: Path) -> None:
    run_kedro(kedro_project, "data", params=TINY)

    # interrupted: SIGTERM to `kedro run` stops both training processes, the runs end KILLED
    process = start_kedro(kedro_project, "stage1", PARAMS)
    wait_for_checkpoint_epochs(kedro_project, process, 2)
    workers = [int(pid) for pid in Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()]
    assert len(workers) >= 2  # the two ranks (and multiprocessing's resource tracker)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) != 0
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in workers if _alive(pid)], "training processes outlived the interrupted kedro run"
    killed = pipeline_runs(kedro_project, "stage1")
    assert len(killed) == 2 and {r.info.status for r in killed} == {"KILLED"}

    # the rerun resumes on two processes and finishes as one MLflow run (+ its stage1 child)
    process = start_kedro(kedro_project, "stage1", PARAMS)
    assert process.wait(timeout=600) == 0, process.stderr.read()[-3000:]
    summary = json.loads((kedro_project / "data/08_reporting/stage1/training_summary.json").read_text())
    assert summary["resumed_from_epoch"] >= 2 and summary["epochs_run"] == EPOCHS
    assert summary["trainer"]["world_size"] == 2 and summary["trainer"]["strategy"] == "ddp"
    history = pd.read_csv(kedro_project / "data/08_reporting/stage1/history.csv")
    assert list(history["epoch"]) == list(range(1, EPOCHS + 1))
    runs = [r for r in pipeline_runs(kedro_project, "stage1") if r.info.run_id not in {k.info.run_id for k in killed}]
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    child = next(r for r in runs if r.data.tags.get("mlflow.parentRunId"))
    assert child.data.metrics["world_size"] == 2
    assert child.data.metrics["global_batch_size"] == 8  # 4 per process x 2 processes
    assert child.data.params["trainer.devices"] == "2"
    client = MlflowClient(tracking_uri=f"sqlite:///{kedro_project / 'mlflow.db'}")
    steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_loss")]
    assert steps == list(range(summary["resumed_from_epoch"] + 1, EPOCHS + 1))  # once per epoch, not per rank

    # one set of checkpoints, written by rank 0
    folder = kedro_project / "data/06_models/stage1"
    assert sorted(p.name for p in folder.iterdir() if p.is_file()) == ["best.pt", "last.pt"]

    # the logged validation metrics are the whole set's (both ranks' shards added up), not rank 0's half
    whole = _whole_val_set_metrics(kedro_project, CheckpointStore(folder).load("last"))
    for key in ("val_accuracy", "val_macro_f1", "val_miou", "val_iou", "val_combined_score"):
        assert history[key].iloc[-1] == pytest.approx(whole[key], abs=1e-6), key


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_multi_node_recipe_trains_one_stage_on_two_nodes(kedro_project: Path, monkeypatch) -> None:
    """docs/distributed.md's recipe with two "nodes" of one CPU process each on this machine."""
    run_kedro(kedro_project, "data", params=TINY)
    params = [p for p in PARAMS if not p.startswith(("trainer.devices", "stage1.epochs"))]
    params += ["trainer.devices=1", "trainer.num_nodes=2", "stage1.epochs=2"]
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    monkeypatch.setenv("NODE_RANK", "1")
    joined = start_kedro(kedro_project, "stage1", params, command="join-training")
    monkeypatch.setenv("NODE_RANK", "0")
    trained = start_kedro(kedro_project, "stage1", params)
    assert trained.wait(timeout=600) == 0, trained.stderr.read()[-3000:]
    assert joined.wait(timeout=120) == 0, joined.stderr.read()[-3000:]

    summary = json.loads((kedro_project / "data/08_reporting/stage1/training_summary.json").read_text())
    assert summary["trainer"]["num_nodes"] == 2 and summary["trainer"]["world_size"] == 2
    assert summary["epochs_run"] == 2
    runs = pipeline_runs(kedro_project, "stage1")  # node 1 created none
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    folder = kedro_project / "data/06_models/stage1"
    assert sorted(p.name for p in folder.iterdir() if p.is_file()) == ["best.pt", "last.pt"]
