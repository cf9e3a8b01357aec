"""thresholds → evaluate → inference at the end of the default `kedro run`, inference over a folder,
ONNX export, and explicit threshold overrides — through real Kedro sessions on the tiny demo."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from PIL import Image

from defect_pipeline.config.evaluation import InferenceParams
from defect_pipeline.hooks.pre_run import MissingInputsError
from defect_pipeline.ml.package import ModelPackage
from defect_pipeline.ml.predict import Predictor
from defect_pipeline.ml.serving import encode_image
from defect_pipeline.pipelines.inference.nodes import list_input_images
from tests.conftest import TINY, copy_project, run_kedro
from tests.ml.test_inference import awkward_folder

pytestmark = pytest.mark.slow


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_thresholds_json_records_the_choice_and_is_bundled_with_the_tuned_model(tiny_default_run: Path) -> None:
    report = _json(tiny_default_run / "data/07_model_output/thresholds.json")
    thresholds = report["thresholds"]
    assert set(thresholds) == {"image", "pixel", "min_area", "per_class", "source"}
    assert thresholds["source"].startswith("tuned on") and report["split"] == "val"
    # every part was checked against the fixed point; the tiny run's 3 defect + 1 good validation images
    # cannot show image signal (a random scorer reaches any AUROC there), so the image threshold stays 0.5
    assert set(report["checks"]) == {"image", "pixel"} and report["status"].startswith("kept_fixed:image_no_signal")
    assert thresholds["image"] == 0.5 and "image kept at the fixed value: no signal" in thresholds["source"]
    assert report["image"]["criterion"] == "max_f1" and "curve" in report["image"]
    assert report["pixel"]["criterion"] == "max_dice"
    assert {c["min_area"] for c in report["min_area"]["candidates"]} >= {0, 4, 8}
    assert report["model"]["stage"] == "stage3" and len(report["model"]["weights_sha256"]) == 64
    bundled = _json(tiny_default_run / "data/06_models/tuned/thresholds.json")
    assert bundled == thresholds
    assert (tiny_default_run / "data/08_reporting/thresholds/threshold_curves.png").stat().st_size > 0


def test_summary_json_has_fixed_and_tuned_metrics_and_their_difference(tiny_default_run: Path) -> None:
    summary = _json(tiny_default_run / "data/08_reporting/evaluation/summary.json")
    fixed, tuned = summary["final_metrics_fixed"], summary["final_metrics_thresholded"]
    for key in ("accuracy", "macro_f1", "f1/good", "f1/crack", "image_auroc", "image_ap", "iou", "dice",
                "iou/background", "miou", "miou_defects", "combined_score"):
        assert key in fixed and key in tuned, key
    for key, value in summary["difference_thresholded_minus_fixed"].items():
        assert value == pytest.approx(tuned[key] - fixed[key])
    assert summary["thresholds_fixed"]["image"] == 0.5
    assert summary["thresholds_tuned"] == _json(tiny_default_run / "data/06_models/tuned/thresholds.json")
    manifest = pd.read_parquet(tiny_default_run / "data/03_primary/manifest.parquet")
    assert summary["samples"] == int(((manifest["split"] == "test") & (manifest["status"] == "accepted")).sum())
    report = tiny_default_run / "data/08_reporting/evaluation"
    assert "| metric | fixed (0.5) | tuned | tuned − fixed |" in (report / "report.md").read_text()
    for name in ("confusion_matrix.png", "pr_roc_curves.png", "worst_predictions.png"):
        assert (report / name).stat().st_size > 0


def test_default_run_ends_with_inference_on_the_test_split(tiny_default_run: Path) -> None:
    predictions = pd.read_csv(tiny_default_run / "data/07_model_output/predictions.csv")
    summary = _json(tiny_default_run / "data/08_reporting/evaluation/summary.json")
    assert len(predictions) == summary["samples"] and set(predictions["status"]) == {"ok"}
    assert predictions["thresholds"].str.startswith("tuned on").all()
    for name in predictions["mask_file"]:
        mask = np.asarray(Image.open(tiny_default_run / "data/07_model_output/masks" / name))
        assert mask.shape == (64, 64) and mask.max() <= 3
    assert len(list((tiny_default_run / "data/07_model_output/overlays").rglob("*.jpg"))) == len(predictions)
    inference = _json(tiny_default_run / "data/07_model_output/inference_summary.json")
    assert inference["status"] == {"ok": len(predictions)} and inference["images_per_s"] > 0


def test_evaluation_is_tracked_and_joined_to_the_training_run(tiny_default_run: Path) -> None:
    client = MlflowClient(tracking_uri=f"sqlite:///{tiny_default_run / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("defect_pipeline")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    stage3, evaluate, thresholds = runs["stage3"], runs["evaluate"], runs["thresholds"]
    for run in (evaluate, thresholds, runs["predict"]):
        assert run.data.tags["defect_pipeline.source_run_id"] == stage3.info.run_id
    status = _json(tiny_default_run / "data/07_model_output/thresholds.json")["status"]
    assert thresholds.data.tags["defect_pipeline.thresholds_status"] == status
    assert thresholds.data.params["thresholds.max_accuracy_drop"] == "0.02"
    summary = _json(tiny_default_run / "data/08_reporting/evaluation/summary.json")
    assert evaluate.data.metrics["test_combined_score"] == pytest.approx(
        summary["final_metrics_thresholded"]["combined_score"])
    assert evaluate.data.metrics["test_fixed_combined_score"] == pytest.approx(
        summary["final_metrics_fixed"]["combined_score"])
    assert evaluate.data.params["evaluation.split"] == "test"
    artifacts = {a.path for a in client.list_artifacts(evaluate.info.run_id, "evaluation")}
    assert {"evaluation/summary.json", "evaluation/report.md", "evaluation/confusion_matrix.png"} <= artifacts
    # the thresholds run logs the tuned model: pyfunc predictions use the tuned thresholds
    mlflow.set_tracking_uri(f"sqlite:///{tiny_default_run / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model(f"runs:/{thresholds.info.run_id}/model")
    out = model.predict(pd.DataFrame({"image": [encode_image(np.zeros((64, 64, 3), dtype=np.uint8))]}))
    assert out["thresholds"].iloc[0].startswith("tuned on")


def test_inference_over_a_folder_with_onnx_and_overrides(tiny_default_run: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    project = copy_project(tiny_default_run, tmp_path / "project", monkeypatch)
    folder = awkward_folder(tmp_path / "images", tmp_path / "elsewhere" / "x.png")
    run_kedro(project, "export")
    export = _json(project / "data/08_reporting/export/onnx_export.json")
    assert export["parity_ok"] and max(export["max_abs_difference"].values()) < 1e-3
    params = {"inference": {"input_dir": str(folder), "backend": "onnx", "thresholds": {"image": 0.9}}}
    run_kedro(project, "inference", params=params)
    predictions = pd.read_csv(project / "data/07_model_output/predictions.csv").set_index("relative_path")
    assert predictions.loc["corrupt.png", "status"] == "error"
    assert predictions.loc["link.png", "status"] == "skipped"
    assert (predictions["status"] == "ok").sum() == 4  # rgba, grayscale, odd-sized, 16-bit
    assert predictions["thresholds"].str.contains(r"overridden by inference.thresholds \{'image': 0.9\}").all()
    summary = _json(project / "data/07_model_output/inference_summary.json")
    assert summary["backend"] == "onnx" and summary["thresholds"]["image"] == 0.9
    assert summary["status"] == {"ok": 4, "error": 1, "skipped": 1} and summary["ignored_files"] == ["notes.txt"]
    mask = np.asarray(Image.open(project / "data/07_model_output/masks/odd.png"))
    assert mask.shape == (33, 97)
    assert (project / "data/07_model_output/masks/sub dir/grau ü.png").is_file()


def test_flips_tuned_with_travel_in_the_package_to_evaluate_and_inference(tiny_default_run: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    project = copy_project(tiny_default_run, tmp_path / "project", monkeypatch)
    plain = _json(project / "data/08_reporting/evaluation/summary.json")
    assert plain["model"]["tta"] == []
    run_kedro(project, pipelines=["thresholds", "evaluate"], params={"thresholds": {"tta": ["hflip"]}})
    assert _json(project / "data/06_models/tuned/model.json")["tta"] == ["hflip"]
    assert _json(project / "data/07_model_output/thresholds.json")["parameters"]["tta"] == ["hflip"]
    flipped = _json(project / "data/08_reporting/evaluation/summary.json")
    assert flipped["model"]["tta"] == ["hflip"]
    assert "test-time flips hflip" in (project / "data/08_reporting/evaluation/report.md").read_text()
    # the package predicts with its flips wherever it is loaded (the MLflow pyfunc model builds the same Predictor)
    package = ModelPackage.load(project / "data/06_models/tuned")
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    (own,), (hflip,), (none,) = (Predictor(package, tta=t).probabilities([image]) for t in (None, ["hflip"], []))
    np.testing.assert_array_equal(own.seg_probs, hflip.seg_probs)
    assert not np.allclose(own.seg_probs, none.seg_probs, atol=1e-5)
    # inference follows the package unless told otherwise
    (tmp_path / "images").mkdir()
    Image.fromarray(image).save(tmp_path / "images/a.png")
    run_kedro(project, "inference", params={"inference": {"input_dir": str(tmp_path / "images")}})
    assert _json(project / "data/07_model_output/inference_summary.json")["model"]["tta"] == ["hflip"]
    run_kedro(project, "inference", params={"inference": {"input_dir": str(tmp_path / "images"), "tta": []}})
    assert _json(project / "data/07_model_output/inference_summary.json")["model"]["tta"] == []


def test_inference_without_input_dir_or_model_says_what_to_do(kedro_project: Path) -> None:
    # no model yet: the pre-run check names it and the command that makes it, before any node runs
    (kedro_project / "images").mkdir()
    for params in ({}, {**TINY, "inference": {"input_dir": "images"}}):
        with pytest.raises(MissingInputsError, match=r"tuned_model .*made by `kedro run --pipeline=thresholds`"):
            run_kedro(kedro_project, "inference", params=params)
    # no input folder: the node that lists it says which parameter to set
    with pytest.raises(ValueError, match="inference.input_dir is not set"):
        list_input_images(InferenceParams())


def test_the_default_run_registers_the_tuned_model_and_promotes_it(tiny_default_run: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """`models:/defect_pipeline@candidate` loads and predicts after `kedro run`; the first evaluated version
    becomes the champion, and `promote` run again does not move it (no registry before: this failed)."""
    uri = f"sqlite:///{tiny_default_run / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    thresholds = next(r for r in client.search_runs(
        [client.get_experiment_by_name("defect_pipeline").experiment_id]) if r.info.run_name == "thresholds")
    candidate = client.get_model_version_by_alias("defect_pipeline", "candidate")
    assert candidate.run_id == thresholds.info.run_id
    assert candidate.tags["git.commit"] and candidate.tags["defect_pipeline.manifest_hash"]
    summary = _json(tiny_default_run / "data/08_reporting/evaluation/summary.json")
    assert float(candidate.tags["test_combined_score"]) == pytest.approx(
        summary["final_metrics_thresholded"]["combined_score"], abs=1e-5)
    assert client.get_model_version_by_alias("defect_pipeline", "champion").version == candidate.version
    promotion = _json(tiny_default_run / "data/08_reporting/registry/promotion.json")
    assert promotion["promoted"] and promotion["reason"] == "there is no champion yet"
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/defect_pipeline@candidate")
    out = model.predict(pd.DataFrame({"image": [encode_image(np.zeros((64, 64, 3), dtype=np.uint8))]}))
    assert out.loc[0, "status"] == "ok" and out.loc[0, "thresholds"].startswith("tuned on")

    project = copy_project(tiny_default_run, tmp_path / "project", monkeypatch)
    run_kedro(project, "promote")
    again = _json(project / "data/08_reporting/registry/promotion.json")
    assert not again["promoted"] and "is the champion already" in again["reason"]
    assert "Not promoted" in (project / "data/08_reporting/registry/promotion.md").read_text()
