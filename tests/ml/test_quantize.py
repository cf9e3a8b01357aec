"""int8 export and execution providers (:mod:`defect_pipeline.ml.quantize`, :mod:`defect_pipeline.ml.onnx_runner`).

Before issue 17 the export stopped at fp32 (no ``model.int8.onnx``, no ``int8_model``), the runner had
no precision or provider choice and the report named no provider: every test here failed.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from defect_pipeline.ml.export import OnnxExport, export_onnx
from defect_pipeline.ml.labels import LabelSpace
from defect_pipeline.ml.onnx_runner import OnnxRunner, resolve_providers
from defect_pipeline.ml.package import ModelPackage
from defect_pipeline.ml.predict import Predictor
from defect_pipeline.ml.quantize import quantize_int8, throughput
from tests.conftest import make_tiny_package

LABELS = LabelSpace(("crack", "spot"))
CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"


@pytest.fixture(scope="module")
def exported() -> tuple[ModelPackage, OnnxExport]:
    package = make_tiny_package(LABELS)
    return package, export_onnx(package)


def test_auto_takes_the_best_provider_available_and_a_missing_one_is_refused() -> None:
    assert resolve_providers("auto", [CPU]) == [CPU]
    assert resolve_providers("auto", ["AzureExecutionProvider", CPU, CUDA, TRT]) == [TRT, CUDA, CPU]
    assert resolve_providers("tensorrt", [TRT, CPU]) == [TRT, CPU]  # the CPU stays as onnxruntime's fallback
    assert resolve_providers("cpu", [TRT, CUDA, CPU]) == [CPU]
    with pytest.raises(ValueError, match=r"no TensorrtExecutionProvider \(available: CPUExecutionProvider\).*auto"):
        resolve_providers("tensorrt", [CPU])
    with pytest.raises(ValueError, match="must be one of auto, tensorrt, cuda, cpu"):
        resolve_providers("openvino", [CPU])


def test_export_report_names_the_providers_and_falls_back_to_the_cpu(exported) -> None:
    """On a machine without TensorRT / CUDA (CI), ``auto`` runs on the CPU and the report says so."""
    import onnxruntime as ort

    _, export = exported
    providers = export.report["providers"]
    assert providers["available"] == ort.get_available_providers() and providers["requested"] == "auto"
    if TRT not in providers["available"] and CUDA not in providers["available"]:
        assert providers["used"] == [CPU]
    assert providers["max_abs_difference"] < 1e-3
    if TRT not in ort.get_available_providers():
        with pytest.raises(ValueError, match="no TensorrtExecutionProvider"):
            export_onnx(exported[0], provider="tensorrt")


def test_int8_model_is_quantised_saved_and_served_by_the_onnx_backend(exported, tmp_path: Path) -> None:
    import onnx

    package, export = exported
    rng = np.random.default_rng(0)
    calibration = rng.standard_normal((6, 3, 64, 64)).astype(np.float32)
    int8 = quantize_int8(export.model, calibration, batch_size=4)
    graph = onnx.load(io.BytesIO(int8)).graph
    ops = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    assert int8_weights, "no convolution weight was stored as int8"
    assert len(int8) < 0.5 * len(export.model)

    folder = package.save(tmp_path / "model")
    OnnxExport(export.model, {**export.report, "int8": {"file": "model.int8.onnx"}}, int8).save(folder)
    loaded = ModelPackage.load(folder)
    images = [rng.integers(0, 256, (50, 70, 3), dtype=np.uint8) for _ in range(2)]
    fp32_out = Predictor(loaded, backend="onnx").probabilities(images)
    int8_predictor = Predictor(loaded, backend="onnx", onnx_precision="int8", onnx_provider="cpu")
    assert int8_predictor.onnx_providers == [CPU]
    int8_out = int8_predictor.probabilities(images)
    for a, b in zip(fp32_out, int8_out, strict=True):
        assert a.seg_probs.shape == b.seg_probs.shape == (50, 70, LABELS.num_seg_classes)
        assert np.abs(a.class_probs - b.class_probs).max() < 0.25  # quantised, not another model
    assert OnnxExport.load(folder).int8_model == int8
    runner = OnnxRunner(loaded, precision="int8", provider="cpu")
    assert throughput(runner, calibration, batch_size=4, repeats=1) > 0

    # re-exporting without int8 removes the old int8 file (it belongs to the old export)
    export.save(folder)
    assert not (folder / "model.int8.onnx").exists()
    with pytest.raises(FileNotFoundError, match=r"model.int8.onnx; run `kedro run --pipeline=export --params "
                                                r"export.quantize=int8`"):
        Predictor(loaded, backend="onnx", onnx_precision="int8")
    with pytest.raises(ValueError, match="precision must be one of fp32, int8"):
        OnnxRunner(loaded, precision="int4")
    assert json.loads((folder / "model.onnx.json").read_text())["providers"]["requested"] == "auto"


def test_each_int8_setting_shapes_the_quantised_graph(exported) -> None:
    """Failed before ``export.int8_settings``: quantize_int8 had one recipe (QDQ, per-channel) and no ``setting``."""
    import onnx
    from onnx import numpy_helper

    from defect_pipeline.ml.int8_settings import INT8_SETTINGS
    from defect_pipeline.ml.quantize import throughputs

    _, export = exported
    calibration = np.random.default_rng(1).standard_normal((4, 3, 64, 64)).astype(np.float32)

    def conv_weight_scales(model: bytes) -> list[int]:
        graph = onnx.load(io.BytesIO(model)).graph
        inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        weights = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4}
        return [inits[node.input[1]].size for node in graph.node
                if node.op_type == "DequantizeLinear" and node.input[0] in weights]

    per_channel = quantize_int8(export.model, calibration, batch_size=4, setting=INT8_SETTINGS["per_channel"])
    per_tensor = quantize_int8(export.model, calibration, batch_size=4, setting=INT8_SETTINGS["per_tensor"])
    assert max(conv_weight_scales(per_channel)) > 1  # one scale per output channel
    assert conv_weight_scales(per_tensor) and set(conv_weight_scales(per_tensor)) == {1}  # one scale per tensor
    qoperator = quantize_int8(export.model, calibration, batch_size=4, setting=INT8_SETTINGS["qoperator"])
    assert "QLinearConv" in {node.op_type for node in onnx.load(io.BytesIO(qoperator)).graph.node}

    runners = {name: OnnxRunner.from_model(model, provider="cpu", threads=1)
               for name, model in (("fp32", export.model), ("int8", per_tensor))}
    speeds = throughputs(runners, calibration, batch_size=2, repeats=1, single_thread=True)
    assert set(speeds) == {"fp32", "int8"}
    assert all(s["images_per_s"] > 0 and s["images_per_cpu_s"] > 0 for s in speeds.values())
    assert throughputs(runners, calibration, batch_size=2, repeats=1)["int8"]["images_per_cpu_s"] is None
