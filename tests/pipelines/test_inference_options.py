"""``inference.limit`` (the first N images) and ``inference.output_dir`` (where the predictions go), without a
Kedro run: the node on a tiny model package, the parameter checks and the catalog routing.

Against the code before the change these fail: neither setting existed (an unknown-key ParameterError, and
the predict node took no output folder)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from kedro.config import OmegaConfigLoader

from defect_pipeline.config import InferenceParams, ParameterError, RuntimeParams, validate_parameters
from defect_pipeline.ml.inference import first_images, list_images
from defect_pipeline.ml.labels import LabelSpace
from defect_pipeline.ml.package import ModelStore
from defect_pipeline.pipelines.inference.nodes import predict
from tests.conftest import REPO_ROOT, make_tiny_package
from tests.ml.test_inference import EXTENSIONS, awkward_folder

DEFAULT_OUTPUT = "data/07_model_output"


def test_the_first_n_rows_of_a_listing_are_kept() -> None:
    files = pd.DataFrame({"path": ["a.png", "b.png", "c.png"], "status": ["pending", "skipped", "pending"]})
    assert first_images(files, 2)["path"].tolist() == ["a.png", "b.png"]
    assert first_images(files, 10)["path"].tolist() == ["a.png", "b.png", "c.png"]
    assert first_images(files, None) is files
    for bad in (0, -3, True, 2.5):
        with pytest.raises(ValueError, match="inference.limit must be a whole number >= 1"):
            first_images(files, bad)


@pytest.mark.parametrize("limit", [0, -1])
def test_a_limit_below_one_is_refused_with_its_key(limit: int) -> None:
    with pytest.raises(ParameterError, match="inference.limit: Input should be greater than or equal to 1"):
        validate_parameters({"inference": {"limit": limit}})
    assert validate_parameters({"inference": {"limit": 1}})["inference"].limit == 1


def test_predict_scores_only_the_first_images_and_says_so(tmp_path: Path) -> None:
    store = ModelStore(str(tmp_path / "model"))
    make_tiny_package(LabelSpace(("crack", "spot"), has_good=True)).save(store.path)
    files, ignored = list_images(awkward_folder(tmp_path / "in", tmp_path / "elsewhere/x.png"), extensions=EXTENSIONS)
    inputs = {"files": files, "ignored": ignored, "input": "a folder"}
    frame, masks, _, summary = predict(inputs, store, InferenceParams(limit=3, write_overlays=False), RuntimeParams(),
                                       output_dir="out/here")
    assert frame["relative_path"].tolist() == files["relative_path"].tolist()[:3] == ["corrupt.png", "deep.tif",
                                                                                     "link.png"]
    assert summary["files"] == 3 and summary["listed_files"] == 6 and summary["limit"] == 3
    assert summary["output_dir"] == "out/here" and sorted(masks) == ["deep"]  # corrupt: error, link: skipped


def test_an_output_dir_the_catalog_does_not_write_to_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--params inference.output_dir=<folder>"):
        predict({"files": pd.DataFrame(), "ignored": [], "input": ""}, ModelStore(str(tmp_path)),
                InferenceParams(output_dir="elsewhere"), RuntimeParams(), output_dir=DEFAULT_OUTPUT)


def test_the_output_dir_given_with_params_reaches_every_inference_output() -> None:
    def catalog(**runtime_params) -> dict:
        return OmegaConfigLoader(conf_source=str(REPO_ROOT / "conf"), base_env="base", default_run_env="local",
                                 runtime_params=runtime_params)["catalog"]

    for given, folder in (({}, DEFAULT_OUTPUT), ({"inference": {"output_dir": "/runs/line 3"}}, "/runs/line 3")):
        entries = catalog(**given)
        assert entries["inference_output_dir"]["data"] == folder
        assert entries["predictions"]["dataset"]["filepath"] == f"{folder}/predictions.csv"
        assert entries["inference_summary"]["dataset"]["filepath"] == f"{folder}/inference_summary.json"
        assert entries["predicted_masks"]["path"] == f"{folder}/masks"
        assert entries["prediction_overlays"]["path"] == f"{folder}/overlays"
