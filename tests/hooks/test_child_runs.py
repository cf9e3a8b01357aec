"""The child-run hook without a Kedro session: a node's own NodeOutcome — never the contents of its other
outputs — decides how its MLflow child run ends, and the run closes only once the last output was saved."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
from kedro.pipeline import Node

from defect_pipeline.hooks.child_runs import MlflowStageRunHook
from defect_pipeline.tracking.outcome import NodeOutcome
from defect_pipeline.tracking.runs import TRACKED_STAGE_TAG, kind_tag


@pytest.fixture
def hook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The hook inside an open parent run of a throw-away sqlite tracking store."""
    previous, uri = mlflow.get_tracking_uri(), f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # set_tracking_uri writes it too: restored after the test
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("child_runs")  # not an experiment id an earlier test left active in another store
    hook = MlflowStageRunHook()
    hook.after_context_created(SimpleNamespace(config_loader={"parameters": {"evaluation": {"split": "test"}}}))
    with mlflow.start_run(run_name="parent"):
        hook.before_pipeline_run(run_params={"project_path": str(tmp_path), "pipeline_name": "evaluate"})
        yield hook
    mlflow.set_tracking_uri(previous)


def _node(outputs: list[str]) -> Node:
    return Node(lambda split: None, "params:evaluation", outputs, name="evaluate",
                tags=[TRACKED_STAGE_TAG, kind_tag("evaluation")])


def _run(hook: MlflowStageRunHook, node: Node, outputs: dict) -> mlflow.entities.Run:
    hook.before_node_run(node=node, inputs={"params:evaluation": {"split": "test"}})
    child = mlflow.active_run().info.run_id
    hook.after_node_run(node=node, outputs=outputs)
    for name, data in outputs.items():
        assert mlflow.MlflowClient().get_run(child).info.status == "RUNNING"  # open until the last output is saved
        hook.after_dataset_saved(dataset_name=name, data=data, node=node)
    return mlflow.MlflowClient().get_run(child)


def test_a_status_key_in_an_output_does_not_fail_the_run(hook: MlflowStageRunHook) -> None:
    outputs = {"summary": {"status": {"ok": 60}}, "failures": {"status": "failed"}}
    run = _run(hook, _node(list(outputs)), outputs)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"evaluation.split": "test"} and run.data.tags["defect_pipeline.kind"] == "evaluation"
    assert "defect_pipeline.comparison_status" not in run.data.tags


def test_an_outcome_that_did_not_succeed_fails_the_run_with_its_reason(hook: MlflowStageRunHook) -> None:
    outputs = {"result": {"status": "ok"}, "outcome": NodeOutcome("skipped", "needs 9 GiB, 2 GiB free")}
    run = _run(hook, _node(list(outputs)), outputs)
    assert run.info.status == "FAILED"
    assert run.data.tags["defect_pipeline.comparison_status"] == "skipped"
    assert run.data.tags["defect_pipeline.error"] == "needs 9 GiB, 2 GiB free"


def test_a_successful_outcome_and_a_node_without_outputs_finish(hook: MlflowStageRunHook) -> None:
    assert _run(hook, _node(["outcome"]), {"outcome": NodeOutcome()}).info.status == "FINISHED"
    assert _run(hook, _node([]), {}).info.status == "FINISHED"


def test_a_node_that_raises_fails_its_run(hook: MlflowStageRunHook) -> None:
    node = _node(["summary"])
    hook.before_node_run(node=node, inputs={})
    child = mlflow.active_run().info.run_id
    hook.on_node_error(node=node)
    assert mlflow.MlflowClient().get_run(child).info.status == "FAILED"


def test_an_outcome_tags_its_run_whatever_its_status(hook: MlflowStageRunHook) -> None:
    """The thresholds node says which thresholds it kept fixed through its outcome's tags (issue 15, item 6)."""
    status = {"defect_pipeline.thresholds_status": "kept_fixed:image_no_signal"}
    outputs = {"thresholds": {"image": 0.5}, "outcome": NodeOutcome(tags=status)}
    run = _run(hook, _node(list(outputs)), outputs)
    assert run.info.status == "FINISHED" and run.data.tags["defect_pipeline.thresholds_status"] == \
        "kept_fixed:image_no_signal"
    assert "defect_pipeline.comparison_status" not in run.data.tags
    failed = NodeOutcome("failed", "boom", tags={"defect_pipeline.note": "x"})
    run = _run(hook, _node(["outcome"]), {"outcome": failed})
    assert run.info.status == "FAILED" and run.data.tags["defect_pipeline.note"] == "x"
