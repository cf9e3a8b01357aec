"""Where prediction runs: the ``trainer`` block's accelerator/precision reach thresholds, evaluate, ensemble and
inference, the predictor uses them (autocast, device), and onnxruntime picks its execution provider.

Against the code before issue 16 these fail: ``resolve_prediction_device`` and ``choose_providers`` did not exist,
``Predictor`` took no precision and could not be pickled, and the nodes built every predictor on the CPU without
reading ``trainer`` (their reports had no ``device``).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from defect_pipeline.config import (
    EvaluationParams,
    InferenceParams,
    RuntimeParams,
    ThresholdsParams,
    TrainerParams,
)
from defect_pipeline.ml.dataset import labels_from_manifest
from defect_pipeline.ml.device import PredictionDevice, resolve_prediction_device
from defect_pipeline.ml.inference import list_images
from defect_pipeline.ml.labels import LabelSpace
from defect_pipeline.ml.onnx_runner import choose_providers
from defect_pipeline.ml.package import ModelStore
from defect_pipeline.ml.predict import Predictor
from defect_pipeline.pipelines.evaluate import nodes as evaluate_nodes
from defect_pipeline.pipelines.inference.nodes import predict
from defect_pipeline.pipelines.thresholds import nodes as threshold_nodes
from tests.conftest import make_tiny_package, prepared_demo
from tests.ml.test_inference import EXTENSIONS, awkward_folder

LABELS = LabelSpace(("crack", "spot"), has_good=True)


def pretend_cuda(monkeypatch: pytest.MonkeyPatch, *, bf16: bool = True) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


def test_the_trainer_block_decides_where_and_how_prediction_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cpu = resolve_prediction_device("auto", "auto")
    assert (cpu.device, cpu.precision) == ("cpu", "fp32") and "no CUDA device" in cpu.reason
    assert resolve_prediction_device("cpu", "bf16").precision == "bf16"  # asked for: used as given
    with pytest.raises(ValueError, match="trainer.accelerator is cuda but CUDA is not available"):
        resolve_prediction_device("cuda", "auto")
    with pytest.raises(ValueError, match="trainer.precision fp16 needs a CUDA device"):
        resolve_prediction_device("cpu", "fp16")
    pretend_cuda(monkeypatch)
    assert resolve_prediction_device("auto", "auto").describe()["accelerator"] == "cuda"
    assert resolve_prediction_device("gpu", "auto").precision == "bf16"
    pretend_cuda(monkeypatch, bf16=False)
    assert resolve_prediction_device("cuda", "auto").precision == "fp16"  # GPUs without bf16
    assert resolve_prediction_device("cpu", "auto") == PredictionDevice(
        "cpu", "fp32", "trainer.accelerator: cpu; trainer.precision: auto → fp32")


def test_the_predictor_runs_its_network_under_the_precision_it_is_given() -> None:
    package = make_tiny_package(LABELS)
    images = [np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)]
    seen: list[tuple[bool, torch.dtype]] = []
    results = {}
    for precision in ("fp32", "bf16"):
        predictor = Predictor(package, precision=precision)
        hook = predictor._model.register_forward_hook(  # noqa: SLF001 - what the network saw
            lambda module, args, output: seen.append((torch.is_autocast_enabled("cpu"), output[0].dtype)))
        results[precision] = predictor.probabilities(images)[0]
        hook.remove()
    assert seen == [(False, torch.float32), (True, torch.bfloat16)]
    assert results["bf16"].seg_probs.dtype == np.float32  # probabilities come back in fp32
    np.testing.assert_allclose(results["bf16"].class_probs, results["fp32"].class_probs, atol=0.05)
    with pytest.raises(ValueError, match="precision must be fp32, bf16 or fp16"):
        Predictor(package, precision="int8")


def test_a_predictor_travels_to_other_processes_and_devices_with_its_options() -> None:
    predictor = Predictor(make_tiny_package(LABELS), tta=["hflip"])
    predictor.thresholds = predictor.thresholds.replace(image=0.3)
    copy = pickle.loads(pickle.dumps(predictor))
    assert copy.tta == ("hflip",) and copy.thresholds.image == 0.3 and copy.precision == "fp32"
    image = np.random.default_rng(2).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    np.testing.assert_array_equal(copy.predict([image])[0].mask, predictor.predict([image])[0].mask)
    assert predictor.on("cpu") is predictor  # already there: not rebuilt
    moved = predictor.on("cpu", "bf16")
    assert moved is not predictor and moved.precision == "bf16" and moved.tta == ("hflip",)


def test_onnxruntime_uses_the_gpu_providers_it_offers_and_says_when_it_cannot() -> None:
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers("cuda", gpu)[0] == gpu
    assert choose_providers("cuda:1", gpu[1:])[0] == gpu[1:]
    providers, reason = choose_providers("cuda", ["CPUExecutionProvider"])
    assert providers == ["CPUExecutionProvider"] and "install onnxruntime-gpu" in reason
    assert choose_providers("cpu", gpu)[0] == ["CPUExecutionProvider"]


class Recorded:
    """Stands in for ``Predictor`` in a node: records the device and precision asked for, predicts on the CPU."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def __call__(self, package, *, device: str = "cpu", precision: str = "fp32", **kwargs) -> Predictor:
        self.calls.append((device, precision))
        return Predictor(package, precision=precision, **kwargs)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A demo dataset through the data nodes, and a tiny untrained model of its classes."""
    root = tmp_path_factory.mktemp("demo") / "raw"
    params, raw_source, manifest, scan_summary = prepared_demo(root, images_per_class=3, good_images=3,
                                                               image_size=64)
    labels = labels_from_manifest(manifest, defect_classes=scan_summary["classes"], good_label="good")
    store = ModelStore(str(tmp_path_factory.mktemp("model") / "model"))
    make_tiny_package(labels).save(store.path)
    return {"manifest": manifest, "raw_source": raw_source, "scan_summary": scan_summary, "data": params,
            "store": store}


def test_thresholds_and_evaluate_predict_where_the_trainer_block_says(demo: dict,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    args = (demo["store"], demo["manifest"], demo["raw_source"], demo["scan_summary"])
    recorded = Recorded()
    monkeypatch.setattr(threshold_nodes, "Predictor", recorded)
    monkeypatch.setattr(evaluate_nodes, "Predictor", recorded)
    report, *_ = threshold_nodes.tune(*args, ThresholdsParams(min_area_candidates=[0]), demo["data"],
                                      RuntimeParams(), TrainerParams(accelerator="cpu", precision="bf16"))
    assert report["device"]["accelerator"] == "cpu" and report["device"]["precision"] == "bf16"
    pretend_cuda(monkeypatch)  # a GPU machine: the node asks for cuda + bf16 (the stand-in predicts on the CPU)
    summary = evaluate_nodes.evaluate(*args, EvaluationParams(split="val", worst_k=0), demo["data"],
                                      RuntimeParams(), TrainerParams())["summary"]
    assert recorded.calls == [("cpu", "bf16"), ("cuda", "bf16")]
    assert summary["device"]["accelerator"] == "cuda" and "CUDA is available" in summary["device"]["reason"]


def test_inference_moves_its_predictor_to_the_trainer_device_and_records_it(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    folder = make_tiny_package(LABELS).save(tmp_path / "model")
    files, ignored = list_images(awkward_folder(tmp_path / "in", tmp_path / "elsewhere/x.png"), extensions=EXTENSIONS)
    inputs = {"files": files, "ignored": ignored, "input": "a folder"}
    moves: list[tuple[str, str | None]] = []
    original = Predictor.on

    def on(self: Predictor, device: str, precision: str | None = None) -> Predictor:
        moves.append((device, precision))
        return original(self, "cpu", precision)

    monkeypatch.setattr(Predictor, "on", on)
    pretend_cuda(monkeypatch)
    params = InferenceParams(checkpoint=str(folder), write_overlays=False, num_workers=2)
    frame, _, _, summary = predict(inputs, ModelStore(str(tmp_path / "none")), params, RuntimeParams(),
                                   trainer=TrainerParams())
    assert moves == [("cuda", "bf16")]
    assert summary["device"] == {"accelerator": "cuda", "precision": "bf16", "processes": 1,
                                 "reason": "trainer.accelerator: auto, CUDA is available; trainer.precision: auto "
                                           "→ bf16"}
    assert sorted(frame.loc[frame["status"] == "ok", "relative_path"]) == ["deep.tif", "odd.jpg", "rgba.png",
                                                                         "sub dir/grau ü.png"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="trainer.accelerator is cuda but CUDA is not available"):
        predict(inputs, ModelStore(str(tmp_path / "none")), params, RuntimeParams(),
                trainer=TrainerParams(accelerator="cuda"))
