"""Training stages through a real KedroSession on a tiny demo dataset (1 epoch, 64 px)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from defect_pipeline.hooks.pre_run import MissingInputsError
from defect_pipeline.ml.checkpoint import safe_torch_load
from tests.conftest import TINY, TINY_STAGE, run_kedro

pytestmark = pytest.mark.slow



def _summary(project: Path, stage: str) -> dict:
    return json.loads((project / f"data/08_reporting/{stage}/training_summary.json").read_text())


def test_default_run_trains_all_three_stages_in_order(kedro_project: Path) -> None:
    run_kedro(kedro_project, params=TINY)

    assert (kedro_project / "data/08_reporting/augmentation_preview.png").stat().st_size > 0
    for stage in ("stage1", "stage2", "stage3"):
        assert (kedro_project / f"data/06_models/{stage}/best.pt").is_file()
        assert (kedro_project / f"data/08_reporting/{stage}/curves.png").stat().st_size > 0
        history = pd.read_csv(kedro_project / f"data/08_reporting/{stage}/history.csv")
        assert len(history) == 1 and {"train_loss", "val_loss", "val_combined_score"} <= set(history.columns)
    assert _summary(kedro_project, "stage1")["init_from"] == "scratch"
    assert _summary(kedro_project, "stage2")["init_from"].endswith("stage1/best.pt")
    assert _summary(kedro_project, "stage3")["init_from"].endswith("stage2/best.pt")
    # where each stage's weights started and the threads it trained with (conf/base: runtime.cpu_threads 1)
    assert _summary(kedro_project, "stage1")["initial_weights"] == {
        "init_from": "scratch", "pretrained": False, "checkpoint_path": None,
        "description": "random initialisation (model.pretrained: false, no model.checkpoint_path)"}
    stage2_start = _summary(kedro_project, "stage2")["initial_weights"]
    assert stage2_start["init_from"].endswith("stage1/best.pt") and stage2_start["pretrained"] is False
    assert stage2_start["description"] == f"the weights of {stage2_start['init_from']}"
    for stage in ("stage1", "stage2", "stage3"):
        assert _summary(kedro_project, stage)["cpu_threads"] == 1
        assert list(pd.read_csv(kedro_project / f"data/08_reporting/{stage}/history.csv")["cpu_threads"]) == [1]
    last = safe_torch_load(kedro_project / "data/06_models/stage3/last.pt")
    assert last["config"]["stage"]["loss"]["weighting"] == "uncertainty"
    # the learned uncertainty weights are history columns (and so MLflow metrics) under loss_weight_*
    stage3_history = pd.read_csv(kedro_project / "data/08_reporting/stage3/history.csv")
    learned = ["loss_weight_log_var_cls", "loss_weight_log_var_seg", "loss_weight_alpha", "loss_weight_beta"]
    assert set(learned) <= set(stage3_history.columns) and set(learned) <= set(last["history"][-1])
    assert stage3_history["loss_weight_alpha"].iloc[-1] == pytest.approx(
        math.exp(-stage3_history["loss_weight_log_var_cls"].iloc[-1]), rel=1e-5)
    stage1 = safe_torch_load(kedro_project / "data/06_models/stage1/last.pt")
    assert stage1["config"]["stage"]["freeze_backbone"] is True


def test_stage2_alone_needs_stage1_and_says_which_command_to_run(kedro_project: Path) -> None:
    run_kedro(kedro_project, "data", params=TINY)
    with pytest.raises(MissingInputsError, match=r"stage1\.checkpoints .*kedro run --pipeline=stage1"):
        run_kedro(kedro_project, "stage2", params=TINY)  # refused by the pre-run check, before any node
    assert not (kedro_project / "data/06_models/stage2/last.pt").exists()

    scratch = {**TINY, "stage2": {**TINY_STAGE, "init_from": "scratch"}}
    run_kedro(kedro_project, "stage2", params=scratch)
    assert _summary(kedro_project, "stage2")["init_from"] == "scratch"


def test_rerunning_a_finished_stage_says_so(kedro_project: Path, caplog: pytest.LogCaptureFixture) -> None:
    run_kedro(kedro_project, "data", params=TINY)
    run_kedro(kedro_project, "stage1", params=TINY)
    before = (kedro_project / "data/06_models/stage1/last.pt").stat().st_mtime_ns
    run_kedro(kedro_project, "stage1", params=TINY)
    assert "already finished" in caplog.text
    assert _summary(kedro_project, "stage1")["already_finished"] is True
    assert (kedro_project / "data/06_models/stage1/last.pt").stat().st_mtime_ns == before


def test_a_checkpoint_with_other_classes_is_refused_with_the_mismatch_named(kedro_project: Path) -> None:
    run_kedro(kedro_project, "data", params=TINY)
    run_kedro(kedro_project, "stage1", params=TINY)
    # the same folder, relabelled: a defect class disappears from the data
    other = {**TINY, "data": {**TINY["data"], "good_labels": ["good", "spot"]}}
    run_kedro(kedro_project, "data", params=other)
    with pytest.raises(Exception, match=r"classes: checkpoint has"):
        run_kedro(kedro_project, "stage1", params=other)


def test_each_stage_writes_its_curve_diagnosis(kedro_project: Path) -> None:
    run_kedro(kedro_project, "data", params=TINY)
    run_kedro(kedro_project, "stage1", params={**TINY, "stage1": {**TINY_STAGE, "epochs": 2}})
    report = json.loads((kedro_project / "data/08_reporting/stage1/diagnosis.json").read_text())
    assert report["monitor"] == "val_combined_score" and report["epochs"] == 2
    assert isinstance(report["findings"], list) and "config" in report
    assert (kedro_project / "data/08_reporting/stage1/diagnosis.md").read_text().startswith(
        "# Training-curve diagnosis: stage1")
    assert _summary(kedro_project, "stage1")["diagnosis"] == [f"{f['severity']}: {f['kind']}"
                                                              for f in report["findings"]]
    # the commands rerun stage1 (stage2 and stage3 start from it); train accuracy is logged for "train >> val"
    assert report["rerun"] == {"pipeline": "stage1", "stage": "stage1", "later_stages": ["stage2", "stage3"]}
    assert all(a["command"].startswith("kedro run --pipeline=") for f in report["findings"] for a in f["actions"]
               if "command" in a)
    history = pd.read_csv(kedro_project / "data/08_reporting/stage1/history.csv")
    assert history["train_accuracy"].between(0.0, 1.0).all()


def test_diagnose_pipeline_reads_any_history(kedro_project: Path) -> None:
    history = kedro_project / "my history.csv"
    pd.DataFrame({"epoch": [1, 2, 3, 4, 5, 6], "global_step": [5, 10, 15, 20, 25, 30],
                  "train_loss": [1.0, 0.6, 0.4, 0.5, 0.9, 1.4], "val_loss": [1.0, 0.7, 0.5, 0.6, 1.0, 1.5],
                  "val_combined_score": [0.3, 0.4, 0.5, 0.45, 0.3, 0.2],
                  "lr_head": [1e-3] * 6}).to_csv(history, index=False)
    run_kedro(kedro_project, "diagnose", params={"diagnosis": {"history": str(history)}})
    report = json.loads((kedro_project / "data/08_reporting/diagnosis/diagnosis.json").read_text())
    assert {f["kind"] for f in report["findings"]} >= {"divergence"}
    assert report["rerun"] is None and report["next_command"] is None  # no stage known: advice only
    # in a stage's folder (or with diagnosis.stage) the commands rerun that stage from its current parameters
    (kedro_project / "runs/stage2").mkdir(parents=True)
    staged = kedro_project / "runs/stage2/history.csv"
    staged.write_text(history.read_text())
    run_kedro(kedro_project, "diagnose", params={"diagnosis": {"history": str(staged)}})
    report = json.loads((kedro_project / "data/08_reporting/diagnosis/diagnosis.json").read_text())
    assert report["next_command"] == ("kedro run --pipeline=stage2 --params stage2.lr=0.00067,"
                                      "stage2.backbone_lr=0.00067,stage2.warmup_epochs=2.0,stage2.resume=false")
    assert "```bash" in (kedro_project / "data/08_reporting/diagnosis/diagnosis.md").read_text()
    with pytest.raises(ValueError, match="diagnosis.monitor 'val_nope'"):
        run_kedro(kedro_project, "diagnose", params={"diagnosis": {"history": str(history), "monitor": "val_nope"}})
