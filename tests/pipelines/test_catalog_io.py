"""Catalog-owned I/O without a Kedro run: every entry has its kedro-viz layer, the paths a user gives on the
command line reach the catalog, the datasets behind them fail with what to do, and nodes return what their
pipelines declare."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pandas as pd
import pytest
import yaml
from kedro.config import OmegaConfigLoader
from kedro.io import DatasetError

from defect_pipeline.config import CompareBackbonesParams, DiagnosisParams, InspectParams, ModelParams, StageParams
from defect_pipeline.datasets import OnnxModelDataset, TrainingHistoryDataset
from defect_pipeline.ml.export import OnnxExport
from defect_pipeline.ml.stage import StageResult
from defect_pipeline.tracking.outcome import NodeOutcome
from tests.conftest import REPO_ROOT

LAYERS = {"raw", "intermediate", "primary", "feature", "model_input", "models", "model_output", "reporting"}


def _catalog(**runtime_params) -> dict:
    loader = OmegaConfigLoader(conf_source=str(REPO_ROOT / "conf"), base_env="base", default_run_env="local",
                               runtime_params=runtime_params)
    return loader["catalog"]


def test_every_catalog_entry_names_its_layer_and_files_sit_in_that_layers_folder() -> None:
    entries = yaml.safe_load((REPO_ROOT / "conf/base/catalog.yml").read_text())
    folders = {"raw": "01_raw", "intermediate": "02_intermediate", "primary": "03_primary",
               "models": "06_models", "model_output": "07_model_output", "reporting": "08_reporting"}
    for name, entry in entries.items():
        layer = entry.get("metadata", {}).get("kedro-viz", {}).get("layer")
        assert layer in LAYERS, f"{name}: kedro-viz layer {layer!r}"
        path = str(entry.get("filepath") or entry.get("path") or (entry.get("dataset") or {}).get("filepath") or "")
        if path.startswith("data/"):
            assert path.startswith(f"data/{folders[layer]}/"), f"{name}: {path} is not in the {layer} folder"


def test_paths_given_with_params_reach_the_catalog_and_default_otherwise() -> None:
    given = _catalog(diagnosis={"history": "runs/history.csv"}, inspect={"path": "/models"})
    assert given["diagnosis_history"]["filepath"] == "runs/history.csv"
    assert given["checkpoint_folder"]["path"] == "/models"
    default = _catalog()
    assert default["diagnosis_history"]["filepath"] is None
    assert default["checkpoint_folder"]["path"] == "data/06_models"


def test_a_history_that_is_not_given_or_missing_says_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no history.csv given: run this"):
        TrainingHistoryDataset(None, hint="run this").load()
    with pytest.raises(DatasetError, match="does not exist"):
        TrainingHistoryDataset(str(tmp_path / "history.csv"), hint="run this").load()


def test_a_history_comes_with_the_steps_beside_it(tmp_path: Path) -> None:
    pd.DataFrame({"epoch": [1], "val_loss": [0.5]}).to_csv(tmp_path / "history.csv", index=False)
    alone = TrainingHistoryDataset(str(tmp_path / "history.csv")).load()
    assert alone.steps is None and list(alone.epochs["val_loss"]) == [0.5]
    pd.DataFrame({"step": [1, 2], "loss": [1.0, 0.8]}).to_csv(tmp_path / "steps.csv", index=False)
    history = TrainingHistoryDataset(str(tmp_path / "history.csv")).load()
    assert len(history.steps) == 2 and history.path == str(tmp_path / "history.csv")


def test_the_onnx_dataset_writes_the_model_and_its_report_into_the_package_folder(tmp_path: Path) -> None:
    dataset = OnnxModelDataset(str(tmp_path / "tuned"))
    assert not dataset.exists()
    dataset.save(OnnxExport(b"onnx bytes", {"weights_sha256": "abc", "parity_ok": True}))
    assert (tmp_path / "tuned/model.onnx").read_bytes() == b"onnx bytes"
    assert not list((tmp_path / "tuned").glob(".*.tmp"))
    loaded = dataset.load()
    assert dataset.exists() and loaded.report["weights_sha256"] == "abc" and loaded.model == b"onnx bytes"
    with pytest.raises(DatasetError, match="kedro run --pipeline=export"):
        OnnxModelDataset(str(tmp_path / "other")).load()


def test_a_stage_returns_exactly_the_outputs_its_pipeline_maps() -> None:
    from defect_pipeline.pipelines.training.pipeline import OUTPUTS

    assert list(OUTPUTS) == [f.name for f in fields(StageResult)]


def test_a_comparison_slot_says_its_outcome() -> None:
    from defect_pipeline.pipelines.compare_backbones.nodes import _not_compared, train_candidate

    row, outcome = train_candidate(pd.DataFrame(), {}, {}, None, {}, {}, {}, {}, {}, {},
                                   CompareBackbonesParams.model_validate({"backbones": ["resnet18"]}), slot=2)
    assert row == {"slot": 2, "status": "unused"} and outcome == NodeOutcome()
    row, outcome = _not_compared({"slot": 1, "backbone": "big"}, "skipped_memory", "needs 9 GiB")
    assert row["status"] == "skipped_memory" and outcome == NodeOutcome("skipped", "needs 9 GiB", "skipped_memory")
    assert outcome.tag == "skipped_memory" and outcome.mlflow_status == "FAILED"
    assert _not_compared({}, "failed_memory", "OOM")[1] == NodeOutcome("failed", "OOM", "failed_memory")


def test_a_path_set_in_the_parameters_but_not_given_to_the_catalog_is_refused(tmp_path: Path) -> None:
    from defect_pipeline.datasets import TrainingHistory
    from defect_pipeline.pipelines.diagnose.nodes import diagnose_history
    from defect_pipeline.pipelines.inspect_checkpoints.nodes import inspect_checkpoints

    history = TrainingHistory(pd.DataFrame({"epoch": [1], "val_combined_score": [0.5]}), None, "a/history.csv")
    stages = [StageParams()] * 3
    with pytest.raises(ValueError, match="--params diagnosis.history=<path>"):
        diagnose_history(history, DiagnosisParams(history="b/history.csv"), ModelParams(), *stages)
    with pytest.raises(ValueError, match="--params inspect.path=<folder>"):
        inspect_checkpoints(tmp_path, InspectParams(path="elsewhere"), {})


def test_a_relative_path_in_the_parameters_names_the_catalogs_absolute_one(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The documented defaults (``inspect.path: data/06_models``, ``--params diagnosis.history=data/...``) are
    relative; the catalog resolves its paths against the project. Compared as given, the default
    ``kedro run --pipeline=inspect_checkpoints`` refused its own folder."""
    from defect_pipeline.datasets import TrainingHistory
    from defect_pipeline.pipelines.diagnose.nodes import diagnose_history
    from defect_pipeline.pipelines.inspect_checkpoints.nodes import inspect_checkpoints
    from defect_pipeline.util import names_same_place

    monkeypatch.chdir(tmp_path.parent)  # not the project folder: the match must not depend on it
    folder = tmp_path / "data" / "06_models"
    folder.mkdir(parents=True)
    inventory, report, _ = inspect_checkpoints(folder, InspectParams(path="data/06_models"), {})
    assert report["folder"] == str(folder) and inventory.empty
    csv = tmp_path / "data/08_reporting/stage2/history.csv"
    history = TrainingHistory(pd.DataFrame({"epoch": [1, 2], "val_combined_score": [0.5, 0.6]}), None, str(csv))
    report, _ = diagnose_history(history, DiagnosisParams(history="data/08_reporting/stage2/history.csv"),
                                 ModelParams(), *[StageParams()] * 3)
    assert report["history"] == str(csv)
    assert names_same_place("./data/06_models/", folder) and not names_same_place("models", folder)
    assert names_same_place(str(folder), folder) and not names_same_place(str(tmp_path), folder)
