"""The ``data`` pipeline through a real KedroSession: demo data, NEU-Seg, bad parameters."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from defect_pipeline.config import ParameterError
from defect_pipeline.data.layouts import RawDataError
from defect_pipeline.data.manifest import MANIFEST_COLUMNS
from tests.conftest import run_kedro

pytestmark = pytest.mark.slow


def _outputs(project: Path, data_root: str = "data") -> tuple[pd.DataFrame, dict]:
    manifest = pd.read_parquet(project / data_root / "03_primary/manifest.parquet")
    report = json.loads((project / data_root / "08_reporting/data_report.json").read_text())
    return manifest, report


def test_data_pipeline_on_demo_data_accounts_for_every_file(kedro_project: Path) -> None:
    run_kedro(kedro_project, "data")

    manifest, report = _outputs(kedro_project)
    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert report["synthetic_demo_data"] is True
    assert (kedro_project / "data/01_raw/demo/SYNTHETIC_DEMO_DATA.md").is_file()
    acc = report["accounting"]
    assert acc["balanced"] and acc["accepted"] + acc["quarantined"] == acc["samples"] == len(manifest)
    # 3 defect classes x 100 with masks + 100 good without: 700 files, 400 samples, all clean
    assert acc["files_scanned"] == 700 and acc["accepted"] == 400
    assert set(manifest["split"]) == {"train", "val", "test"}
    assert report["classes"] == ["crack", "scratch", "spot"]
    # paths are relative to the raw root, so the project can move
    assert not any(Path(p).is_absolute() for p in manifest["image_path"])
    assert (kedro_project / "data/08_reporting/quarantine.csv").is_file()
    assert "# Data report" in (kedro_project / "data/08_reporting/data_report.md").read_text()

    client = MlflowClient()
    experiment = client.get_experiment_by_name("defect_pipeline")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "data")}
    assert {"data/data_report.json", "data/data_report.md", "data/quarantine.csv"} <= artifacts


def test_same_seed_gives_byte_identical_manifest_and_new_seed_a_new_split(kedro_project: Path) -> None:
    manifest_file = kedro_project / "data/03_primary/manifest.parquet"
    run_kedro(kedro_project, "data")
    first = manifest_file.read_bytes()
    run_kedro(kedro_project, "data")
    assert manifest_file.read_bytes() == first

    run_kedro(kedro_project, "data", params={"data": {"split": {"seed": 7}}})
    reseeded = pd.read_parquet(manifest_file)
    original = pd.read_parquet(pd.io.common.BytesIO(first))
    assert reseeded["split"].value_counts().to_dict() == original["split"].value_counts().to_dict()
    assert not reseeded["split"].equals(original["split"])


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"data": {"splitt": {"seed": 1}}}, "data.splitt: unknown key. Did you mean 'split'?"),
        ({"data": {"split": {"val_fraction": 1.5}}}, "data.split.val_fraction"),
        ({"data": {"check": {"num_workers": "many"}}}, "data.check.num_workers"),
        ({"daat": {"raw_root": "x"}}, "daat: unknown parameter block. Did you mean 'data'?"),
    ],
)
def test_bad_parameters_fail_before_any_node_runs(kedro_project: Path, params: dict, expected: str) -> None:
    with pytest.raises(ParameterError) as error:
        run_kedro(kedro_project, "data", params=params)
    assert expected in str(error.value)
    assert not list((kedro_project / "data").rglob("*.parquet")), "nothing may be written"
    assert not (kedro_project / "data/01_raw/demo").exists()
    assert not (kedro_project / "mlflow.db").exists(), "no MLflow run may be created"


def test_nonexistent_raw_root_names_the_path_and_the_parameter(kedro_project: Path) -> None:
    missing = kedro_project / "no_such_folder"
    with pytest.raises(RawDataError) as error:
        run_kedro(kedro_project, "data", params={"data": {"raw_root": str(missing)}})
    assert str(missing) in str(error.value) and "data.raw_root" in str(error.value)


def test_the_pipelines_are_registered() -> None:
    from kedro.framework.project import configure_project, pipelines

    configure_project("defect_pipeline")
    assert "data" in pipelines
    names = {node.name for node in pipelines["__default__"].nodes}
    assert {"organize", "check", "validate_masks", "split", "report"} <= names


@pytest.mark.neu_seg
def test_neu_seg_by_configuration_only(kedro_project: Path, neu_seg_root: Path) -> None:
    run_kedro(kedro_project, "data", env="neu_seg", params={"data": {"raw_root": str(neu_seg_root)}})

    manifest, report = _outputs(kedro_project, "data/neu_seg")  # the environment's own data root
    acc = report["accounting"]
    assert acc["samples"] == 4470 and acc["files_scanned"] == 8940 and acc["balanced"]
    assert report["layout"] == "mmseg" and report["mask_type"] == "class_index"
    assert set(report["class_counts"]) == {"train", "val", "test"}
    assert set(report["class_counts_total"]) == {"inclusion", "patches", "scratches"}
    # what is wrong with this copy of NEU-Seg is found and reported
    assert report["quarantine_reasons"].get("exact_duplicate", 0) >= 1
    assert report["duplicates"]["leakage"], "cross-split duplicates must be flagged"
    assert report["masks"]["multi_class_masks"] > 0, "masks holding two classes must be flagged"
    quarantined = manifest[manifest["status"] == "quarantined"]
    assert (quarantined["reason"] != "").all()
