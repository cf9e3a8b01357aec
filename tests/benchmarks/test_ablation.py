"""The ``ablation`` benchmark: one row per project run, its lever read from the runs' own parameters and its
figures from the runs' MLflow records (fabricated stores, see conftest.py).

Shown failing first: before this change there was no ``ablation`` command
(``defect_pipeline.benchmarks.ablation`` did not exist), so every test here failed at import.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from defect_pipeline.benchmarks import ablation
from defect_pipeline.benchmarks.__main__ import BENCHMARKS

BASE_PARAMS = {
    # a whole block as kedro-mlflow logs it (one text), and its fields one by one (ParameterLoggingHook)
    "model": "backbone='efficientnet_b0' image_size=192",
    "model.backbone": "efficientnet_b0", "model.image_size": "192",
    "stage2.lr": "0.002", "stage2.loss.class_weights": "none", "data.check.num_workers": "None",
}


def _stages(stage2_val: list[float], *, best_epoch: int = 2, precision: str = "bf16") -> dict:
    """stage1: 2 epochs of 60 s at 40 images/s; stage2: 3 epochs of 120 s at 20 images/s, best at ``best_epoch``
    (stage2's last epoch has the highest val mIoU, so the best-over-epochs value is not the checkpoint's)."""
    return {
        "stage1": {"history": [{"epoch_seconds": 60.0, "train_samples_per_s": 40.0, "val_miou": v} for v in (.5, .55)],
                   "final": {"best_epoch": 2}, "tags": {"precision": precision}},
        "stage2": {"history": [{"epoch_seconds": 120.0, "train_samples_per_s": 20.0, "val_miou": v} for v in stage2_val],
                   "final": {"best_epoch": best_epoch, "best_val_miou": max(stage2_val)},
                   "tags": {"precision": precision}},
    }


def _evaluation(miou: float, accuracy: float) -> dict:
    return {"metrics": {"test_miou": miou, "test_accuracy": accuracy, "test_fixed_miou": miou - 0.01,
                        "test_fixed_accuracy": accuracy - 0.01}}


def _tags(machine: str) -> dict[str, str]:
    return {"defect_pipeline.machine": machine, "git.commit": "c" * 40, "git.dirty": "false",
            "command_line": "/venv/bin/kedro run --env neu_seg"}


def _rows(doc: Path) -> list[str]:
    section = doc.read_text().split("<!-- bench:ablation:start -->", 1)[1].split("<!-- bench:ablation:end -->")[0]
    return [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| lever")]


@pytest.fixture
def three_projects(tmp_path: Path, record_run) -> dict:
    """A baseline, a run at another image size (and a precision ``auto`` resolved differently), and a run with
    another stage-2 learning rate and class weights that also ran a stage 3."""
    a, b, c = (tmp_path / name / "project" for name in "abc")
    runs = {
        a: record_run(a, params=BASE_PARAMS, stages=_stages([.60, .70, .72]), evaluation=_evaluation(.74, .97),
                      tags=_tags("machine A")),
        b: record_run(b, params={**BASE_PARAMS, "model": "backbone='efficientnet_b0' image_size=224",
                                 "model.image_size": "224"},
                      stages=_stages([.62, .71, .69], precision="fp32"), evaluation=_evaluation(.755, .98),
                      tags=_tags("machine B")),
        c: record_run(c, params={**BASE_PARAMS, "stage2.lr": "0.004", "stage2.loss.class_weights": "balanced",
                                 "data.check.num_workers": "2", "stage3.lr": "0.001", "stage3.epochs": "2"},
                      stages=_stages([.70, .75, .60]), evaluation=_evaluation(.73, .96), tags=_tags("machine A")),
    }
    return {"projects": (a, b, c), "runs": runs}


def test_one_row_per_run_with_the_parameters_it_changed_and_its_recorded_figures(
        tmp_path: Path, three_projects: dict) -> None:
    a, b, c = three_projects["projects"]
    ids = {p: three_projects["runs"][p]["parent"] for p in (a, b, c)}
    doc = tmp_path / "benchmarks.md"
    ablation.main(["--project", str(a), "--project", str(b), "--project", str(c), "--ignore", "data.check.*",
                   "--doc", str(doc)])

    # val: stage2's best epoch (2), not its best-over-epochs value; minutes: 2 x 60 s + 3 x 120 s = 8.0;
    # images/s: (2 x 60 s x 40 + 3 x 120 s x 20) / 480 s = 25.0; test: the evaluate run's tuned metrics
    assert _rows(doc) == [
        f"| baseline | {a} | 70.0 % | 74.0 % | 97.0 % | 8.0 | 25.0 | `{ids[a]}` | machine A |",
        "| model.image_size: 192 → 224; stage1.precision (resolved): bf16 → fp32; "
        f"stage2.precision (resolved): bf16 → fp32 | {b} | 71.0 % | 75.5 % | 98.0 % | 8.0 | 25.0 | `{ids[b]}` "
        "| machine B |",
        "| stage3: only in this run; stage2.loss.class_weights: none → balanced; stage2.lr: 0.002 → 0.004 "
        f"| {c} | 75.0 % ★ | 73.0 % | 96.0 % | 8.0 | 25.0 | `{ids[c]}` | machine A |",
    ]
    text = doc.read_text()
    assert "Choices are made on val" in text and "not used to choose anything" in text
    assert "not compared: `data.check.*`" in text
    assert "ablation" in BENCHMARKS


def test_the_baseline_can_be_any_run_and_fixed_thresholds_on_request(tmp_path: Path, three_projects: dict) -> None:
    a, b, _ = three_projects["projects"]
    doc = tmp_path / "benchmarks.md"
    ablation.main(["--project", str(a), "--project", str(b), "--baseline", str(b), "--thresholds", "fixed",
                   "--doc", str(doc)])
    rows = _rows(doc)
    assert rows[0].startswith("| model.image_size: 224 → 192; stage1.precision (resolved): fp32 → bf16; ")
    assert rows[0].split(" | ")[3:5] == ["73.0 %", "96.0 %"]  # test_fixed_* of the evaluate run
    assert rows[1].startswith("| baseline | ")


def test_the_newest_finished_default_run_is_read_unless_a_run_id_is_given(tmp_path: Path, record_run) -> None:
    project = tmp_path / "project"
    older = record_run(project, params=BASE_PARAMS, stages=_stages([.1, .2, .3]), evaluation=_evaluation(.2, .5))
    newest = record_run(project, params=BASE_PARAMS, stages=_stages([.6, .7, .8]), evaluation=_evaluation(.7, .9))
    record_run(project, params=BASE_PARAMS, stages=_stages([.9, .9, .9]), status="RUNNING")  # still training
    record_run(project, params=BASE_PARAMS, stages=_stages([.9, .9, .9]), pipeline="stage2")  # not a default run
    doc = tmp_path / "benchmarks.md"
    ablation.main(["--project", str(project), "--project", f"{project}@{older['parent']}", "--doc", str(doc)])
    rows = _rows(doc)
    assert f"`{newest['parent']}`" in rows[0] and " | 70.0 % ★ | 70.0 % | 90.0 % | " in rows[0]
    assert f"`{older['parent']}`" in rows[1] and " | 20.0 % | 20.0 % | 50.0 % | " in rows[1]
    assert rows[1].startswith("| nothing (same parameters as the baseline) | ")


def test_val_of_a_stage_validated_every_n_steps_is_read_at_its_best_step(tmp_path: Path, record_run) -> None:
    project = tmp_path / "project"
    stage = {"history": [{"step": s, "epoch_seconds": 30.0, "train_samples_per_s": 10.0, "val_miou": v}
                         for s, v in ((50, .4), (100, .6), (150, .5))],
             "final": {"best_epoch": 1, "best_step": 100}, "params": {"val_every_n_steps": "50"}}
    record_run(project, params=BASE_PARAMS, stages={"stage1": stage}, evaluation=_evaluation(.6, .9))
    doc = tmp_path / "benchmarks.md"
    ablation.main(["--project", str(project), "--doc", str(doc)])
    assert _rows(doc)[0].split(" | ")[2:6] == ["60.0 % ★", "60.0 %", "90.0 %", "1.5"]


def test_a_run_without_evaluate_or_machine_says_so_instead_of_guessing(tmp_path: Path, record_run) -> None:
    project = tmp_path / "project"
    record_run(project, params=BASE_PARAMS, stages=_stages([.6, .7, .8]))
    doc = tmp_path / "benchmarks.md"
    ablation.main(["--project", str(project), "--doc", str(doc)])
    cells = _rows(doc)[0].split(" | ")
    assert cells[2:5] == ["70.0 % ★", "–", "–"] and cells[-1] == "not recorded |"


def test_the_stores_are_only_read(tmp_path: Path, three_projects: dict) -> None:
    """The runs reported may still be training (or be someone else's): the command never writes to them."""
    stores = [p / "mlflow.db" for p in three_projects["projects"]]
    before = [hashlib.sha256(s.read_bytes()).hexdigest() for s in stores]
    ablation.main([*sum((["--project", str(p)] for p in three_projects["projects"]), []),
                   "--doc", str(tmp_path / "benchmarks.md")])
    assert [hashlib.sha256(s.read_bytes()).hexdigest() for s in stores] == before
    assert sorted(p.name for p in stores[0].parent.iterdir()) == ["mlflow.db"]  # no journal or WAL left behind


def test_bad_input_names_what_is_missing_and_what_to_do(tmp_path: Path, record_run) -> None:
    with pytest.raises(SystemExit, match=r"nowhere/mlflow.db: no MLflow database there; run `kedro run`"):
        ablation.main(["--project", str(tmp_path / "nowhere"), "--doc", str(tmp_path / "b.md")])
    running = tmp_path / "running"
    record_run(running, params=BASE_PARAMS, stages=_stages([.6, .7, .8]), status="RUNNING")
    with pytest.raises(SystemExit, match=r"no finished run of the default pipeline .*__default__ \(RUNNING\)"):
        ablation.main(["--project", str(running), "--doc", str(tmp_path / "b.md")])
    with pytest.raises(SystemExit, match="--baseline other is not one of the --project values"):
        ablation.main(["--project", str(running), "--baseline", "other", "--doc", str(tmp_path / "b.md")])
    assert not (tmp_path / "b.md").exists()


def test_a_parameter_the_baseline_did_not_log_counts_as_its_default() -> None:
    """A parameter added after the baseline ran (``stage2.ema.enabled``) is no lever when the newer run kept its
    default, and shows the default as the baseline's value when it changed it (before: ``unset → False``)."""
    defaults = ablation.default_settings()
    assert defaults["stage2.ema.enabled"] == "False" and defaults["model.backbone"]
    base = {"stage2.lr": "0.002"}
    kept = {**base, "stage2.ema.enabled": "False"}
    changed = {**base, "stage2.ema.enabled": "True", "stage2.unknown_key": "1"}
    assert ablation.lever(kept, base, defaults=defaults) == []
    assert ablation.lever(changed, base, defaults=defaults) == ["stage2.ema.enabled: False → True",
                                                                 "stage2.unknown_key: unset → 1"]
    assert ablation.lever(kept, base) == ["stage2.ema.enabled: unset → False"]  # without defaults: as before
