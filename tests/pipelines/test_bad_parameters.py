"""Bad parameters stop `kedro run` before any node runs: no MLflow run is created and nothing is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from defect_pipeline.config import ParameterError
from tests.conftest import TINY, run_kedro

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(("params", "fragment"), [
    ({"stage1": {"lr": -0.1}}, "stage1.lr"),
    ({"stage1": {"lrr": 0.1}}, "stage1.lrr: unknown key. Did you mean 'lr'"),
    ({"stage2": {"epochs": "many"}}, "stage2.epochs"),
    ({"model": {"backbone": "convnext_atoo"}}, "model.backbone: unknown backbone 'convnext_atoo'"),
    ({"model": {"image_size": 100}}, "model.image_size: image size 100 is not a multiple of the model stride 32"),
    ({"model": {"decoder_channels": 48}}, "model.decoder_channels"),
    ({"evaluation": {"worst_k": -1}}, "evaluation.worst_k"),
])
def test_bad_parameters_fail_before_anything_runs(kedro_project: Path, params: dict, fragment: str) -> None:
    with pytest.raises(ParameterError) as error:
        run_kedro(kedro_project, "data", params={**TINY, **params})
    assert fragment in str(error.value)
    assert not (kedro_project / "data").exists()
    assert not (kedro_project / "mlflow.db").exists() and not (kedro_project / "mlruns").exists()


def test_unknown_backbone_suggests_close_names(kedro_project: Path) -> None:
    with pytest.raises(ParameterError, match=r"close timm names: .*convnext_atto"):
        run_kedro(kedro_project, "data", params={**TINY, "model": {"backbone": "convnext_atoo"}})
