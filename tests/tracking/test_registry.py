"""The model registry: tuned models become versions of one registered model; ``champion`` moves only
when the test metric improves on the same manifest; ``models:/<name>@<alias>`` loads everywhere.

Each test uses its own sqlite MLflow store and tiny random models (no training). Before the
registry existed nothing was registered (``mlflow.pyfunc.load_model("models:/defect_pipeline@candidate")``
raised), so every test here fails on that code.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from defect_pipeline.config import RegistryParams
from defect_pipeline.ml.labels import LabelSpace
from defect_pipeline.ml.model_use import load_member
from defect_pipeline.ml.package import ModelStore
from defect_pipeline.ml.serving import encode_image
from defect_pipeline.pipelines.registry import nodes
from defect_pipeline.tracking.pyfunc import load_logged_package, log_pyfunc_model
from defect_pipeline.tracking.registry import TEST_MANIFEST_TAG, Side, compare, promote
from defect_pipeline.tracking.runs import KIND_TAG
from tests.conftest import make_tiny_package

NAME = "defect_pipeline"
LABELS = LabelSpace(("crack", "spot"), has_good=True)
MANIFEST = pd.DataFrame({"sample_id": ["a", "b"], "split": ["test", "test"]})


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("registry")  # not the experiment id an earlier test left active (another store's)
    yield tmp_path
    while mlflow.active_run() is not None:
        mlflow.end_run()


def _tuned_model(folder: Path, seed: int) -> ModelStore:
    """A tiny package logged the way the thresholds node's dataset logs it (a thresholds-kind run)."""
    package = make_tiny_package(LABELS, seed=seed)
    with mlflow.start_run(run_name="thresholds", tags={KIND_TAG: "thresholds", "git.commit": "abc123"}) as run:
        package.meta["mlflow_run_id"] = run.info.run_id
        log_pyfunc_model(package.save(folder))
    return ModelStore(str(folder))


def _summary(store: ModelStore | None, score: float) -> dict:
    return {"model": {"mlflow_run_id": store.meta()["mlflow_run_id"] if store else None},
            "final_metrics_thresholded": {"combined_score": score, "miou": score / 2},
            "final_metrics_fixed": {"combined_score": score - 0.1}}


def test_register_promote_when_better_and_not_when_worse(store: Path) -> None:
    params = RegistryParams()
    first = _tuned_model(store / "v1", seed=0)
    registration = nodes.register(first, params)
    assert registration["registered"] and registration["version"] == "1"
    assert registration["uri"] == f"models:/{NAME}@candidate"
    client = MlflowClient()
    version = client.get_model_version(NAME, "1")
    assert version.tags["git.commit"] == "abc123" and version.tags["defect_pipeline.weights_sha256"]

    report, markdown = nodes.promote_model(_summary(first, 0.6), MANIFEST, params)
    assert report["promoted"] and "no champion yet" in report["reason"]
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"
    assert client.get_model_version(NAME, "1").tags["test_combined_score"] == "0.6"  # test metrics as tags
    assert "Promoted" in markdown and f"models:/{NAME}@champion" in markdown

    worse = _tuned_model(store / "v2", seed=1)
    assert nodes.register(worse, params)["version"] == "2"
    assert str(client.get_model_version_by_alias(NAME, "candidate").version) == "2"
    report, markdown = nodes.promote_model(_summary(worse, 0.5), MANIFEST, params)
    assert not report["promoted"] and "0.5000 vs 0.6000" in report["reason"]
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"  # unchanged
    assert "Not promoted" in markdown and "| candidate | 2 | 0.5000 |" in markdown

    better = _tuned_model(store / "v3", seed=2)
    nodes.register(better, params)
    report, _ = nodes.promote_model(_summary(better, 0.7), MANIFEST, params)
    assert report["promoted"] and report["champion_before"]["version"] == "1"
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "3"


def test_a_champion_tested_on_other_data_is_not_compared(store: Path) -> None:
    params = RegistryParams()
    first, second = _tuned_model(store / "v1", seed=0), _tuned_model(store / "v2", seed=1)
    for model in (first, second):
        nodes.register(model, params)
    nodes.promote_model(_summary(first, 0.3), MANIFEST, params)
    other_data = pd.concat([MANIFEST, MANIFEST.assign(sample_id=["c", "d"])])
    report, _ = nodes.promote_model(_summary(second, 0.9), other_data, params)
    assert not report["promoted"] and "not comparable" in report["reason"]
    assert "require_same_manifest" in report["reason"]
    assert MlflowClient().get_model_version(NAME, "2").tags[TEST_MANIFEST_TAG] != \
        MlflowClient().get_model_version(NAME, "1").tags[TEST_MANIFEST_TAG]


def test_lower_is_better_and_min_delta() -> None:
    champion, candidate = Side("1", 0.30, "m"), Side("2", 0.25, "m")
    rules = {"metric": "loss", "require_same_manifest": True}
    assert compare(candidate, champion, greater_is_better=False, min_delta=0.0, **rules)[0]
    assert not compare(candidate, champion, greater_is_better=True, min_delta=0.0, **rules)[0]
    assert not compare(candidate, champion, greater_is_better=False, min_delta=0.1, **rules)[0]
    assert not compare(Side("2", None, "m"), None, greater_is_better=True, min_delta=0.0, **rules)[0]


def test_an_unknown_metric_is_refused_with_the_names_there_are(store: Path) -> None:
    params = RegistryParams.model_validate({"promote": {"metric": "test_accuracy"}})
    with pytest.raises(ValueError, match=r"registry.promote.metric 'test_accuracy'.*test_combined_score"):
        nodes.promote_model(_summary(None, 0.5), MANIFEST, params)


def test_an_unlogged_model_is_not_registered_and_promote_says_so(store: Path, tmp_path: Path) -> None:
    package = make_tiny_package(LABELS)
    package.meta["mlflow_run_id"] = "0" * 32  # e.g. a stage run's id copied into a package saved untracked
    unlogged = ModelStore(str(package.save(tmp_path / "unlogged")))
    registration = nodes.register(unlogged, RegistryParams())
    assert not registration["registered"] and "tracking was off" in registration["reason"]
    report = promote(name=NAME, run_id="0" * 32, test_metrics={"test_combined_score": 0.5}, test_manifest="m",
                     metric="test_combined_score", champion_alias="champion")
    assert not report["promoted"] and "was not registered" in report["reason"]


def test_inference_and_ensembles_load_models_by_alias(store: Path) -> None:
    tuned = _tuned_model(store / "v1", seed=0)
    nodes.register(tuned, RegistryParams())
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@candidate")
    out = model.predict(pd.DataFrame({"image": [encode_image(np.zeros((40, 50, 3), dtype=np.uint8))]}))
    assert list(out["status"]) == ["ok"]
    package = load_member(f"models:/{NAME}@candidate", load_logged=load_logged_package)  # inference.checkpoint
    assert package.weights_sha256 == tuned.load().weights_sha256
    with pytest.raises(ValueError, match=f"models:/{NAME}@champion"):
        load_member(f"models:/{NAME}@champion", load_logged=load_logged_package)  # no champion yet
