"""Runs that cannot succeed are refused before any node runs: no MLflow run, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from defect_pipeline.hooks.pre_run import PreRunChecksError, unwritable_outputs
from tests.conftest import TINY, pipeline_runs, run_kedro

pytestmark = pytest.mark.slow


def test_a_file_where_the_output_folder_should_be_is_named(kedro_project: Path) -> None:
    run_kedro(kedro_project, "data", params=TINY)
    (kedro_project / "data/06_models").write_text("not a folder")
    with pytest.raises(PreRunChecksError) as error:
        run_kedro(kedro_project, "stage1", params=TINY)
    message = str(error.value)
    assert "data/06_models is a file" in message and "stage1.checkpoints must be written" in message
    assert pipeline_runs(kedro_project, "stage1") == []  # refused before kedro-mlflow opened a run
    assert not (kedro_project / "data/08_reporting/stage1").exists()


def test_a_read_only_output_folder_is_named(tmp_path: Path, monkeypatch) -> None:
    # the tests run as root, for whom chmod does not restrict: the permission answer is injected
    folder = tmp_path / "reports"
    folder.mkdir()
    monkeypatch.setattr("os.access", lambda path, mode: Path(path) != folder)
    problems = unwritable_outputs({"report": folder / "sub" / "report.json", "ok": tmp_path / "other.json"})
    assert problems == [f"{folder} is not writable, and report is written there ({folder}/sub/report.json): "
                        "fix its permissions or point the catalog entry elsewhere"]


def test_stage2_from_a_stage1_model_of_other_classes_is_refused_before_it_runs(kedro_project: Path) -> None:
    run_kedro(kedro_project, "data", params=TINY)
    run_kedro(kedro_project, "stage1", params=TINY)
    # the data changes after stage1 was trained: no defect-free images any more
    rebuilt = {**TINY, "data": {**TINY["data"], "demo": {**TINY["data"]["demo"], "good_images": 0}}}
    run_kedro(kedro_project, "data", params=rebuilt)
    with pytest.raises(PreRunChecksError,
                       match=r"stage2 starts from the previous stage's model \(stage1\), whose classes"):
        run_kedro(kedro_project, "stage2", params=rebuilt)
    assert pipeline_runs(kedro_project, "stage2") == []
    assert not (kedro_project / "data/06_models/stage2").exists()
    # starting from scratch is allowed: the message's other way out
    run_kedro(kedro_project, "stage2", params={**rebuilt, "stage2": {**TINY["stage2"], "init_from": "scratch"}})
    assert (kedro_project / "data/06_models/stage2/last.pt").is_file()


def test_a_diverging_stage_stops_at_once_and_its_runs_end_failed(kedro_project: Path) -> None:
    """Not a pre-run check, but the same promise of nothing half-done: NaN through `kedro run`."""
    import hashlib

    from defect_pipeline.ml.engine import NonFiniteLossError

    run_kedro(kedro_project, "data", params=TINY)
    run_kedro(kedro_project, "stage1", params=TINY)
    best = kedro_project / "data/06_models/stage1/best.pt"
    before = hashlib.sha256(best.read_bytes()).hexdigest()
    diverging = {**TINY, "stage1": {**TINY["stage1"], "resume": False, "lr": 1e30, "epochs": 3}}
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 1, epoch 1, batch 1"):
        run_kedro(kedro_project, "stage1", params=diverging)
    assert hashlib.sha256(best.read_bytes()).hexdigest() == before  # best unchanged
    runs = sorted(pipeline_runs(kedro_project, "stage1"), key=lambda r: r.info.start_time)
    assert {r.info.status for r in runs[-2:]} == {"FAILED"}  # the diverging run and its stage1 child
    assert {r.info.status for r in runs[:2]} == {"FINISHED"}
