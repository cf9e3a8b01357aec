"""`kedro run --pipeline=compare_backbones`: two tiny backbones train, one unknown backbone fails and a
too-large one is skipped for memory — and the comparison still comes out."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from tests.conftest import TINY, run_kedro

pytestmark = pytest.mark.slow


def test_two_backbones_compared_and_failures_reported(kedro_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from defect_pipeline.pipelines.compare_backbones import nodes

    monkeypatch.setattr(nodes, "free_memory_bytes", lambda device: 2.0 * 2**30)  # a small machine: 2 GiB free
    run_kedro(kedro_project, "data", params=TINY)
    params = {**TINY, "compare_backbones": {
        "backbones": ["resnet18", "convnext_atto", "no_such_net", "convnext_large"],
        "stage": {"epochs": 2, "batch_size": 8, "max_batches_per_epoch": 2, "warmup_epochs": 0.0}}}
    run_kedro(kedro_project, "compare_backbones", params=params)

    out = kedro_project / "data/08_reporting/compare_backbones"
    table = pd.read_csv(out / "comparison.csv").set_index("backbone")
    assert list(table.index) == ["resnet18", "convnext_atto", "no_such_net", "convnext_large"]
    assert list(table["status"]) == ["ok", "ok", "failed", "skipped_memory"]
    ok = table.loc[["resnet18", "convnext_atto"]]
    assert (ok["epochs_run"] == 2).all() and (ok["train_samples_per_s"] > 0).all()
    assert ok.loc["resnet18", "parameters_m"] > ok.loc["convnext_atto", "parameters_m"] > 0
    # how each candidate was set up, as its training recorded it (conf/base: runtime.cpu_threads 1)
    assert (ok["initial_weights"] == "random initialisation (model.pretrained: false, no model.checkpoint_path)").all()
    assert (ok["cpu_threads"] == 1).all()
    assert "unknown backbone 'no_such_net'" in table.loc["no_such_net", "error"]
    assert "GiB" in table.loc["convnext_large", "error"] and "skipped" in table.loc["convnext_large", "error"]
    markdown = (out / "comparison.md").read_text()
    best = ok["best_val_combined_score"].idxmax()
    assert f"| best validation combined score | {best} |" in markdown
    assert f"| lowest validation loss | {ok['best_val_loss'].idxmin()} |" in markdown
    assert "## Not compared" in markdown and "no_such_net" in markdown

    client = MlflowClient(tracking_uri=f"sqlite:///{kedro_project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("defect_pipeline")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])
            if r.data.tags.get("defect_pipeline.kind") == "comparison"}
    assert sorted(runs) == ["compare:convnext_atto", "compare:convnext_large", "compare:no_such_net",
                            "compare:resnet18"]  # unused slots open no run
    assert runs["compare:resnet18"].info.status == "FINISHED"
    assert runs["compare:resnet18"].data.params["backbone"] == "resnet18"
    assert runs["compare:resnet18"].data.params["epochs"] == "2"
    assert runs["compare:no_such_net"].info.status == "FAILED"
    assert runs["compare:convnext_large"].data.tags["defect_pipeline.comparison_status"] == "skipped_memory"
