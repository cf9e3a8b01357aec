"""The run's log file without a Kedro session: its name, what goes in, and that it ends up in the MLflow parent run
whether the run finishes, fails or is refused — with the root logger left as it was.

The hook's wrappers are driven the way pluggy drives them (``next`` to the ``yield``, then ``send`` / ``throw``).
Against the code before the change these fail: there was no log file (ImportError of the hook)."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

import mlflow
import pytest

from defect_pipeline.hooks.run_log import LOG_FILE_TAG, RunLogHook, log_file_path

log = logging.getLogger("defect_pipeline.test_run_log")


@pytest.fixture
def tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A throw-away sqlite tracking store; the project logger at INFO, as Kedro sets it."""
    previous, uri = mlflow.get_tracking_uri(), f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("run_log")
    project, level = logging.getLogger("defect_pipeline"), logging.getLogger("defect_pipeline").level
    project.setLevel(logging.INFO)
    yield mlflow.MlflowClient(uri)
    project.setLevel(level)
    mlflow.set_tracking_uri(previous)


def _start(hook: RunLogHook, project: Path, pipeline: str):
    """before_pipeline_run as pluggy runs it: the wrapper up to its yield, kedro-mlflow's run opened inside."""
    wrapper = hook.before_pipeline_run(run_params={"project_path": str(project), "pipeline_names": [pipeline]})
    next(wrapper)
    run = mlflow.start_run(run_name=pipeline)
    with pytest.raises(StopIteration):
        wrapper.send(None)
    return run


def _end(wrapper, run_status: str) -> None:
    """An end-of-run wrapper around kedro-mlflow ending its run."""
    next(wrapper)
    mlflow.end_run(run_status)
    with pytest.raises(StopIteration):
        wrapper.send(None)


def _logged(client, run_id: str) -> str:
    (artifact,) = client.list_artifacts(run_id, "logs")
    return Path(client.download_artifacts(run_id, artifact.path)).read_text()


def test_names_carry_the_start_time_and_the_pipelines(tmp_path: Path) -> None:
    started = datetime(2025, 3, 4, 5, 6, 7)
    assert log_file_path(tmp_path, ["__default__"], started).name == "2025-03-04_05-06-07_default.log"
    assert log_file_path(tmp_path, ["stage1", "stage2"], started).name == "2025-03-04_05-06-07_stage1+stage2.log"
    assert log_file_path(tmp_path, ["a b/c"], started).name == "2025-03-04_05-06-07_a_b_c.log"
    (tmp_path / "2025-03-04_05-06-07_default.log").touch()  # a run of the same second
    assert log_file_path(tmp_path, ["__default__"], started).name == "2025-03-04_05-06-07_default-2.log"


def test_a_finished_run_leaves_its_log_in_logs_and_in_the_parent_run(tracking, tmp_path: Path) -> None:
    handlers = list(logging.getLogger().handlers)
    hook = RunLogHook()
    run = _start(hook, tmp_path, "stage1")
    log.info("epoch 1 done")
    logging.getLogger("some.library").debug("not at INFO: left out")
    _end(hook.after_pipeline_run(), "FINISHED")
    (path,) = (tmp_path / "logs").glob("*_stage1.log")
    text = path.read_text()
    assert "INFO     defect_pipeline.test_run_log: epoch 1 done" in text and "left out" not in text
    assert "this run's log file" in text and text.rstrip().endswith("run finished; log closed")
    assert _logged(tracking, run.info.run_id) == text
    assert tracking.get_run(run.info.run_id).data.tags[LOG_FILE_TAG] == str(path)
    assert logging.getLogger().handlers == handlers  # the handler is gone again
    log.info("after the run")
    assert "after the run" not in path.read_text()


def test_a_failed_run_keeps_its_traceback_in_the_file_and_in_mlflow(tracking, tmp_path: Path) -> None:
    hook = RunLogHook()
    run = _start(hook, tmp_path, "evaluate")
    try:
        raise ValueError("the test split is empty")
    except ValueError as error:
        failure = error
    _end(hook.on_pipeline_error(error=failure), "FAILED")
    text = _logged(tracking, run.info.run_id)
    assert "the run failed:\nTraceback (most recent call last):" in text
    assert "ValueError: the test split is empty" in text and "run failed; log closed" in text


def test_a_refused_run_says_why_in_its_file(tracking, tmp_path: Path) -> None:
    handlers = list(logging.getLogger().handlers)
    wrapper = RunLogHook().before_pipeline_run(run_params={"project_path": str(tmp_path),
                                                           "pipeline_names": ["stage2"]})
    next(wrapper)
    with pytest.raises(RuntimeError, match="another `kedro run`"):
        wrapper.throw(RuntimeError("another `kedro run` is running in this project"))
    (path,) = (tmp_path / "logs").glob("*_stage2.log")
    assert "refused before any node ran: another `kedro run`" in path.read_text()
    assert logging.getLogger().handlers == handlers


def test_an_unwritable_log_folder_is_a_warning_not_a_failed_run(tracking, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "logs").write_text("a file where the folder should be")
    hook = RunLogHook()
    with caplog.at_level(logging.WARNING):
        run = _start(hook, tmp_path, "stage1")
    _end(hook.after_pipeline_run(), "FINISHED")
    assert "no log file for this run: cannot write into" in caplog.text
    assert tracking.list_artifacts(run.info.run_id, "logs") == []
