"""A fresh clone's `kedro run --pipeline=<p>` for a pipeline whose inputs another pipeline makes: a few lines
naming what is missing and the commands that make it, a non-zero exit, no node run and no MLflow run.

Against the old code `kedro run --pipeline=stage2` ended in a ~250-line traceback whose last line was
`DatasetError: manifest: Failed while loading data ...` (and a FAILED MLflow run); these tests then failed
on the missing MissingInputsError / the traceback in the output.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from defect_pipeline.hooks.missing_inputs import MissingInput, missing_inputs_message
from defect_pipeline.hooks.pre_run import MissingInputsError
from tests.conftest import run_kedro

pytestmark = pytest.mark.slow

# pipeline → (inputs the message must name, the commands it must list in order)
FRESH_CLONE = {
    "stage2": (["manifest", "stage1.checkpoints"], ["data", "stage1"]),
    "stage3": (["manifest", "stage2.checkpoints"], ["data", "stage1", "stage2"]),
    "thresholds": (["manifest", "stage1.model"], ["data", "stage1"]),
    "evaluate": (["manifest", "tuned_model"], ["data", "stage1", "thresholds"]),
    "inference": (["tuned_model"], ["data", "stage1", "thresholds"]),
    "export": (["tuned_model"], ["data", "stage1", "thresholds"]),
}


def pipeline_runs(project: Path, pipeline: str) -> list:
    """The MLflow runs of ``kedro run --pipeline=<pipeline>`` in the project (none when no experiment exists)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("defect_pipeline")
    if experiment is None:
        return []
    return [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("kedro.pipeline") == pipeline]


def _commands(message: str) -> list[str]:
    order = message.splitlines()[-2]
    return [part.split("--pipeline=")[1].split("`")[0] for part in order.split(", then ")]


@pytest.mark.parametrize("pipeline", sorted(FRESH_CLONE))
def test_a_fresh_clone_is_told_what_to_run_first(kedro_project: Path, pipeline: str) -> None:
    names, commands = FRESH_CLONE[pipeline]
    params = {"inference": {"input_dir": str(kedro_project)}} if pipeline == "inference" else None
    with pytest.raises(MissingInputsError) as refused:
        run_kedro(kedro_project, pipeline, params=params)
    message = str(refused.value)
    assert len(message.splitlines()) <= 10, message
    assert message.startswith(f"`kedro run --pipeline={pipeline}` reads what other pipelines make")
    for name in names:
        assert name in message
    assert _commands(message) == commands
    assert message.splitlines()[-1] == "or run everything at once: `kedro run`"
    assert pipeline_runs(kedro_project, pipeline) == []  # refused before kedro-mlflow opened a run
    assert not (kedro_project / "data/08_reporting").exists() and not (kedro_project / "data/06_models").exists()


def test_a_stage_started_from_scratch_needs_only_the_data(kedro_project: Path) -> None:
    with pytest.raises(MissingInputsError) as refused:
        run_kedro(kedro_project, "stage2", params={"stage2": {"init_from": "scratch"}})
    message = str(refused.value)
    assert "stage1" not in message and _commands(message) == ["data"]


def test_the_environment_is_part_of_every_command() -> None:
    missing = [MissingInput("manifest", "data/neu_seg/03_primary/manifest.parquet", "data")]
    message = missing_inputs_message("kedro run --pipeline=advise", missing, ["data"], "neu_seg")
    assert "`kedro run --pipeline=data --env neu_seg`" in message
    assert message.endswith("`kedro run --env neu_seg`") and "data/neu_seg/03_primary" in message


def test_kedro_run_on_the_command_line_prints_a_short_error_and_exits_non_zero(kedro_project: Path) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{kedro_project / 'mlflow.db'}",
           "KEDRO_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1", "COLUMNS": "200"}
    done = subprocess.run([sys.executable, "-m", "kedro", "run", "--pipeline=stage2"], cwd=kedro_project, env=env,
                          capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "Traceback" not in output and "DatasetError" not in output
    error = output[output.index("Error: "):].strip().splitlines()
    assert len(error) <= 10, error
    assert "manifest" in error[0] + error[1] and "`kedro run --pipeline=data`" in "\n".join(error)
    assert pipeline_runs(kedro_project, "stage2") == []
