"""``test_metrics --json``: the headline result as JSON, holding exactly what the section shows.

A fabricated project (stage summaries and histories as a run writes them, an MLflow store with its
default run) and the checkpoint's evaluation replaced by fixed metrics (the measurement is not what is
tested here). Shown failing first: before this change ``test_metrics`` had no ``--json`` (argparse
exits with "unrecognized arguments"), named no MLflow run and did not check that the data folder
belongs to it, so every test here failed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import torch

from defect_pipeline.benchmarks import describe_machine, test_metrics
from defect_pipeline.config import ModelParams
from defect_pipeline.ml.stage import initial_weights_record

REPORTING = "data/08_reporting"
METRICS = {"miou": 0.81234, "miou_defects": 0.75678, "iou/background": 0.96, "iou/inclusion": 0.6512,
           "iou/patches": 0.85, "iou/scratches": 0.77, "accuracy": 0.99123, "macro_f1": 0.98, "images": 446}
FIELDS = {"miou_incl_bg", "miou_defects", "iou", "image_accuracy", "training_minutes", "command", "git_commit",
          "mlflow_run_id", "machine"}


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _project(tmp_path: Path, record_run, monkeypatch, *, best_epoch: int = 2, machine: bool = True) -> tuple:
    """Three stages of two epochs (stage3 best at epoch 2), 60 + 1200 + 540 s of epochs, and the MLflow default run
    (its stage3 recorded ``best_epoch``)."""
    project = tmp_path / "project"
    for number, seconds in ((1, [30.0, 30.0]), (2, [600.0, 600.0]), (3, [270.0, 270.0])):
        stage = f"stage{number}"
        folder = project / REPORTING / stage
        folder.mkdir(parents=True)
        pd.DataFrame({"epoch": [1, 2], "epoch_seconds": seconds, "cpu_threads": [1, 1]}).to_csv(
            folder / "history.csv", index=False)
        init_from = "scratch" if number == 1 else f"data/06_models/stage{number - 1}/best.pt"
        (folder / "training_summary.json").write_text(json.dumps({
            "stage": stage, "backbone": "efficientnet_b0", "decoder": "fpn", "precision": "bf16",
            "init_from": init_from, "initial_weights": initial_weights_record(init_from, ModelParams()),
            "best_epoch": 2, "epochs_run": 2, "monitor": "val_combined_score", "best_metric": 0.85}))
    (project / "data/03_primary").mkdir(parents=True)
    pd.DataFrame({"split": ["test"]}).to_parquet(project / "data/03_primary/manifest.parquet")
    history = [{"epoch_seconds": 1.0, "train_samples_per_s": 1.0, "val_miou": 0.5}] * 2
    tags = {"git.commit": "a" * 40, "git.dirty": "false",
            "command_line": "/work/neu_run/A/project/.venv/bin/kedro run --env neu_seg",
            **({"defect_pipeline.machine": "Test CPU, 2 cores"} if machine else {})}
    ids = record_run(project, params={"model.backbone": "efficientnet_b0"}, tags=tags, stages={
        name: {"history": history, "final": {"best_epoch": best_epoch if name == "stage3" else 2, "epochs_run": 2}}
        for name in ("stage1", "stage2", "stage3")})
    monkeypatch.setattr(test_metrics, "evaluate_checkpoint", lambda *args, **kwargs: dict(METRICS))
    return project, ids


def test_the_json_has_every_field_and_the_values_the_section_shows(tmp_path: Path, record_run, monkeypatch) -> None:
    project, ids = _project(tmp_path, record_run, monkeypatch)
    doc, out = tmp_path / "benchmarks.md", tmp_path / "docs/results/neu_seg.json"
    test_metrics.main(["--project", str(project), "--root", "raw", "--title", "NEU-Seg (CPU)", "--doc", str(doc),
                       "--json", str(out)])

    result = json.loads(out.read_text())
    assert FIELDS <= set(result)
    assert result["mlflow_run_id"] == ids["parent"] and result["git_commit"] == "a" * 40
    assert result["command"] == "kedro run --env neu_seg"  # the run's own command line, not a default
    assert result["machine"] == "Test CPU, 2 cores" and result["machine_source"] == "recorded by the training run"
    assert result["iou"] == {"background": 0.96, "inclusion": 0.6512, "patches": 0.85, "scratches": 0.77}
    assert (result["miou_incl_bg"], result["miou_defects"], result["image_accuracy"]) == (0.8123, 0.7568, 0.9912)
    assert result["training_minutes"] == 30.0  # (60 + 1200 + 540) s of epochs

    section = doc.read_text().split("<!-- bench:test_metrics:start -->", 1)[1].split("<!-- bench:test_metrics:end")[0]
    rows = dict(re.findall(r"^\| ([^|]+?) \| \**([^|*]+?)\** \|$", section, re.MULTILINE))
    pct = lambda v: f"{100 * v:.2f} %"  # noqa: E731
    assert rows["mIoU incl. background (published NEU-Seg metric)"] == pct(result["miou_incl_bg"]) == "81.23 %"
    assert rows["mIoU over defect classes"] == pct(result["miou_defects"])
    assert {k: rows[f"IoU {k}"] for k in result["iou"]} == {k: pct(v) for k, v in result["iou"].items()}
    assert rows["image accuracy"] == pct(result["image_accuracy"])
    assert f"Training wall time (sum of the stages' epochs): {result['training_minutes']:.1f} min" in section
    assert f"Trained by `{result['command']}` and measured by `{result['measured_by']}`" in section
    assert f"Machine: {result['machine']} (recorded by the training run)" in section
    assert f"MLflow run `{result['mlflow_run_id']}` (git commit `{result['git_commit']}`)." in section


def test_a_run_that_did_not_record_its_machine_is_reported_with_this_one_and_says_so(
        tmp_path: Path, record_run, monkeypatch) -> None:
    project, _ = _project(tmp_path, record_run, monkeypatch, machine=False)
    out = tmp_path / "neu_seg.json"
    test_metrics.main(["--project", str(project), "--root", "raw", "--doc", str(tmp_path / "b.md"),
                       "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["machine"] == describe_machine()
    assert result["machine_source"] == "the machine this command ran on (the training run did not record one)"


def test_a_data_folder_from_another_run_is_refused(tmp_path: Path, record_run, monkeypatch) -> None:
    project, ids = _project(tmp_path, record_run, monkeypatch, best_epoch=1)
    with pytest.raises(SystemExit, match=rf"MLflow run {ids['parent']}'s stage3 recorded best epoch 1 of 2, "
                                         r".*training_summary.json says 2 of 2: .* pass --run-id"):
        test_metrics.main(["--project", str(project), "--root", "raw", "--doc", str(tmp_path / "b.md"),
                           "--json", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "b.md").exists()


def test_json_without_an_mlflow_store_names_the_missing_database(tmp_path: Path, record_run, monkeypatch) -> None:
    project, _ = _project(tmp_path, record_run, monkeypatch)
    (project / "mlflow.db").unlink()
    with pytest.raises(SystemExit, match=r"mlflow.db: no MLflow database there; run `kedro run`"):
        test_metrics.main(["--project", str(project), "--root", "raw", "--doc", str(tmp_path / "b.md"),
                           "--json", str(tmp_path / "x.json")])


def test_the_tuned_models_flips_are_measured_and_said(tmp_path: Path, record_run, monkeypatch) -> None:
    project, _ = _project(tmp_path, record_run, monkeypatch)
    calls = []
    monkeypatch.setattr(test_metrics, "evaluate_checkpoint",
                        lambda *args, **kwargs: calls.append(kwargs.get("tta")) or dict(METRICS))
    tuned = project / "data/06_models/tuned"
    tuned.mkdir(parents=True)
    (tuned / "model.json").write_text(json.dumps({"tta": ["hflip", "vflip"]}))
    doc, out = tmp_path / "benchmarks.md", tmp_path / "neu_seg.json"
    test_metrics.main(["--project", str(project), "--root", "raw", "--doc", str(doc), "--json", str(out)])
    assert calls == [("hflip", "vflip")]
    assert json.loads(out.read_text())["test_time_flips"] == ["hflip", "vflip"]
    assert "averaged with the test-time flips hflip, vflip" in doc.read_text()
    # an explicit --tta wins, and is part of the command the section names
    test_metrics.main(["--project", str(project), "--root", "raw", "--doc", str(doc), "--json", str(out), "--tta"])
    assert calls[-1] == () and json.loads(out.read_text())["test_time_flips"] == []
    assert "--tta`" in doc.read_text() and "test-time flips" not in doc.read_text()
