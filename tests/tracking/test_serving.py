"""REST serving of the registered model: a real ``mlflow models serve`` on localhost, a real HTTP client.

One server start for the whole module (a tiny random resnet18 package registered as
``models:/defect_pipeline@candidate``). Over HTTP, labels, scores and decoded masks must equal the
in-process predictor's, for path and base64 inputs and both compact mask formats; a record that is
not an image or lacks its field gets an error row naming the problem, and the server keeps serving.
Before this change the server answered a base64 record with ``FileNotFoundError: ... 'nan'`` and sent
masks as nested lists only; the logged model had no signature.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from defect_pipeline.data.imageio import load_image
from defect_pipeline.ml.labels import LabelSpace
from defect_pipeline.ml.package import ModelPackage
from defect_pipeline.ml.predict import Predictor
from defect_pipeline.ml.serving import decode_mask, encode_image, encode_mask
from defect_pipeline.tracking.pyfunc import log_pyfunc_model
from defect_pipeline.tracking.registry import register_tuned_model
from defect_pipeline.tracking.runs import KIND_TAG
from tests.conftest import REPO_ROOT, make_tiny_package

pytestmark = pytest.mark.slow
LABELS = LabelSpace(("crack", "spot"), has_good=True)
NAME = "defect_pipeline"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(port: int, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    """(port, package folder, images folder): the registered tiny model served on a free localhost port."""
    root = tmp_path_factory.mktemp("serving")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("serving")  # not the experiment id an earlier test left active (another store's)
    package = make_tiny_package(LABELS, seed=3)
    with mlflow.start_run(tags={KIND_TAG: "thresholds"}) as run:
        package.meta["mlflow_run_id"] = run.info.run_id
        folder = package.save(root / "package")
        log_pyfunc_model(folder)
    assert register_tuned_model(package.meta, name=NAME, alias="candidate")["registered"]
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name, shape in (("a.png", (48, 64, 3)), ("b.png", (70, 50)), ("c.jpg", (64, 64, 3))):
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(images / name)
    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(REPO_ROOT / "src"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # mlflow runs uvicorn
    log = open(root / "server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{NAME}@candidate",
                               "--env-manager", "local", "--host", "127.0.0.1", "-p", str(port), "-w", "1"],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow models serve did not start:\n{(root / 'server.log').read_text()[-3000:]}")
            time.sleep(1)
        yield port, folder, images
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        log.close()


def test_http_predictions_equal_the_in_process_predictor(served) -> None:
    port, folder, images = served
    b_bytes = (images / "b.png").read_bytes()
    records = [{"path": str(images / "a.png")}, {"image": base64.b64encode(b_bytes).decode()},
               {"image": encode_image(load_image(images / "c.jpg"))}]
    expected = Predictor(ModelPackage.load(folder)).predict(
        [load_image(images / "a.png"), load_image(images / "b.png"), load_image(images / "c.jpg")])
    for mask_format in ("png", "rle"):
        status, body = _post(port, {"dataframe_records": records, "params": {"mask_format": mask_format}})
        assert status == 200, body
        rows = body["predictions"]
        assert [row["status"] for row in rows] == ["ok"] * 3
        for row, prediction in zip(rows, expected):
            assert row["label"] == prediction.label
            assert row["defect_score"] == pytest.approx(prediction.defect_score, abs=1e-5)
            for name, value in prediction.row().items():
                if name.startswith("score_"):
                    assert row[name] == pytest.approx(value, abs=1e-5)
            np.testing.assert_array_equal(decode_mask(row["mask"], mask_format), prediction.mask)
        if mask_format == "png":  # compact: a 64 x 64 mask is a short string, not 4096 numbers
            assert isinstance(rows[0]["mask"], str) and len(rows[0]["mask"]) < 1000
    status, body = _post(port, {"dataframe_records": records[:1], "params": {"mask_format": "list"}})
    assert status == 200 and np.array_equal(np.asarray(body["predictions"][0]["mask"]), expected[0].mask)


def test_bad_records_get_error_rows_and_the_server_keeps_serving(served) -> None:
    port, _, images = served
    records = [{"image": base64.b64encode(b"not an image").decode()}, {"image": "%%% not base64"},
               {"path": str(images / "a.png")}, {"path": None}]
    status, body = _post(port, {"dataframe_records": records})
    assert status == 200, body
    rows = body["predictions"]
    assert [row["status"] for row in rows] == ["error", "error", "ok", "error"]
    assert "record 0" in rows[0]["error"] and "not a decodable image" in rows[0]["error"]
    assert "record 1" in rows[1]["error"] and "not valid base64" in rows[1]["error"]
    assert "record 3" in rows[3]["error"] and "needs 'path'" in rows[3]["error"] and "'image'" in rows[3]["error"]
    status, body = _post(port, {"dataframe_records": [{"path": str(images / "a.png")}],
                                "params": {"mask_format": "bmp"}})
    assert status >= 400 and "mask_format" in json.dumps(body)
    status, body = _post(port, {"dataframe_records": [{"path": str(images / "b.png")}]})  # still serving
    assert status == 200 and body["predictions"][0]["status"] == "ok"


def test_the_logged_model_has_a_signature_and_an_input_example(served) -> None:
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@candidate")
    inputs = {spec.name for spec in model.metadata.get_input_schema().inputs}
    assert inputs == {"path", "image"}
    assert {p.name for p in model.metadata.get_params_schema().params} == {"mask_format", "batch_size"}
    example = model.input_example
    assert isinstance(example, pd.DataFrame) and list(example.columns) == ["image"]
    out = model.predict(example, params={"mask_format": "rle"})
    assert out.loc[0, "status"] == "ok" and decode_mask(out.loc[0, "mask"], "rle").shape == (16, 16)


def test_mask_codecs_round_trip() -> None:
    mask = np.zeros((5, 7), np.uint8)
    mask[1:3, 2:6] = 2
    mask[4, 6] = 1
    for mask_format in ("png", "rle", "list", "array"):
        np.testing.assert_array_equal(decode_mask(encode_mask(mask, mask_format), mask_format), mask)
    assert encode_mask(mask, "rle") == {"size": [5, 7], "values": [0, 2, 0, 2, 0, 1],
                                        "lengths": [9, 4, 3, 4, 14, 1]}
