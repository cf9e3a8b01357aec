"""The trained model as an MLflow pyfunc model, thresholds bundled, ready for ``mlflow models serve``.

``mlflow.pyfunc.load_model(uri).predict(records, params=...)`` and the REST server's
``/invocations`` take a table of records, each with ``path`` (an image file on the serving
machine) or ``image`` (the image file's bytes, base64-encoded) — see
:mod:`defect_pipeline.ml.serving` —, and return one row per record: ``label``, ``defect_score``,
``score_<class>`` per image class, ``defect_area`` (pixels), ``mask`` (0 background, ``1 + i``
defect class ``i``, at the image's size; by default a base64 PNG, or as ``params.mask_format``
says: ``rle``, ``list`` of lists, ``array``), ``status`` (``ok`` or ``error``), ``error`` (which
field of which record is missing or bad, or why a file could not be read; such rows carry no
prediction) and ``thresholds`` (which operating point was applied, from the package's
``thresholds.json``). A bad record never fails the request. The logged model carries that
signature (optional ``path``/``image`` string columns, params ``mask_format`` and ``batch_size``)
and an input example (one base64 PNG). In-process, ``unwrap_python_model().predict(None, images)``
also takes a list of arrays or an ``(N, H, W[, C])`` array.

The model's artifacts are a :class:`~defect_pipeline.ml.package.ModelPackage` folder (weights in
safetensors) and the ``defect_pipeline`` package itself (``code_paths``), so a machine with the
pinned requirements can load it without this repository. The model is logged "from code"
(:mod:`defect_pipeline.tracking.pyfunc_model`), so loading it unpickles nothing.
"""

from __future__ import annotations

import importlib.metadata
import logging
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema

logger = logging.getLogger(__name__)

MODEL_NAME = "model"
PACKAGE_ARTIFACT = "package"
REQUIREMENTS = ("torch", "torchvision", "timm", "segmentation-models-pytorch", "albumentations", "opencv-python-headless",
                "safetensors", "pillow", "numpy", "pandas")


class DefectPyfuncModel(mlflow.pyfunc.PythonModel):
    """Loads the package folder once and predicts through :class:`~defect_pipeline.ml.predict.Predictor`."""

    def load_context(self, context: Any) -> None:
        from defect_pipeline.ml.predict import Predictor

        self._predictor = Predictor.from_folder(context.artifacts[PACKAGE_ARTIFACT])

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201 - MLflow reads type hints as a signature
        params = params or {}
        return predict_frame(self._predictor, model_input, batch_size=int(params.get("batch_size", 16)),
                             mask_format=str(params.get("mask_format", "png")))


def signature() -> ModelSignature:
    """Input records with an optional ``path`` or ``image`` (base64) column; ``mask_format`` and ``batch_size``."""
    return ModelSignature(
        inputs=Schema([ColSpec(DataType.string, "path", required=False),
                       ColSpec(DataType.string, "image", required=False)]),
        params=ParamSchema([ParamSpec("mask_format", DataType.string, "png"),
                            ParamSpec("batch_size", DataType.long, 16)]))


def input_example() -> pd.DataFrame:
    """One record holding a small base64 PNG (what a remote client sends)."""
    from defect_pipeline.ml.serving import encode_image

    gradient = np.tile(np.linspace(0, 255, 16, dtype=np.uint8), (16, 1))
    return pd.DataFrame({"image": [encode_image(np.stack([gradient] * 3, axis=-1))]})


def _inputs(model_input: Any) -> tuple[list[str | None] | None, list[Any]]:
    """(the records' paths or None when the input had no path column, what to predict per record).

    A DataFrame is a table of records (``path`` or ``image``, see :mod:`defect_pipeline.ml.serving`);
    a list of images or an ``(N, H, W[, C])`` array (in-process, through ``unwrap_python_model()``) is
    predicted as it is.
    """
    from defect_pipeline.ml.serving import parse_records

    if isinstance(model_input, pd.DataFrame):
        records = model_input.to_dict("records")
        paths = [record.get("path") if isinstance(record.get("path"), str) else None for record in records] \
            if "path" in model_input.columns else None
        return paths, parse_records(records)
    if isinstance(model_input, np.ndarray) and model_input.ndim in (2, 3) and model_input.dtype != object:
        model_input = [model_input] if model_input.ndim == 2 else list(model_input)
    return None, list(model_input)


def predict_frame(predictor: Any, model_input: Any, *, batch_size: int = 16, mask_format: str = "png"
                  ) -> pd.DataFrame:
    """One row per record: the prediction, or ``status: error`` with the reason (a bad record, an unreadable
    file) — one bad record never fails the others. Masks in ``mask_format`` (:data:`~defect_pipeline.ml.serving.MASK_FORMATS`)."""
    from defect_pipeline.ml.inference import entry_status, stream_predictions
    from defect_pipeline.ml.serving import RecordError, check_mask_format, encode_mask

    check_mask_format(mask_format)
    paths, items = _inputs(model_input)
    rows: list[dict[str, Any]] = [{**({"path": paths[i]} if paths is not None else {}), "status": "error",
                                   "error": item.message if isinstance(item, RecordError) else "",
                                   "thresholds": predictor.thresholds.source} for i, item in enumerate(items)]
    readable = []  # a path that cannot be read at all (loop, folder, empty file) is its row's error, per entry
    for index, item in enumerate(items):
        if isinstance(item, RecordError):
            continue
        status, reason = entry_status(item) if isinstance(item, (str, Path)) else ("pending", "")
        if status == "pending":
            readable.append((index, item))
        else:
            rows[index].update(status=status, error=reason)
    for index, prediction, error, _ in stream_predictions(readable, predictor, batch_size=batch_size):
        if prediction is None:
            rows[index]["error"] = error
        else:
            rows[index].update(prediction.row(), mask=encode_mask(prediction.mask, mask_format), status="ok")
    return pd.DataFrame(rows)


def pip_requirements() -> list[str]:
    """Pinned versions of what loading and running the model needs (as installed here)."""
    pins = []
    for name in REQUIREMENTS:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pins.append(name)
    return pins


def log_pyfunc_model(package_folder: str | Path, *, name: str = MODEL_NAME) -> str:
    """Log a package folder as a pyfunc model into the active run; returns its model URI."""
    import defect_pipeline

    info = mlflow.pyfunc.log_model(
        name=name,
        python_model=str(Path(__file__).with_name("pyfunc_model.py")),  # models from code: nothing pickled
        artifacts={PACKAGE_ARTIFACT: str(package_folder)},
        code_paths=[str(Path(defect_pipeline.__file__).parent)],
        pip_requirements=pip_requirements(),
        signature=signature(),
        input_example=input_example(),  # MLflow checks it: the model is loaded and predicts it once
    )
    logger.info("logged MLflow model %s (load it with mlflow.pyfunc.load_model)", info.model_uri)
    return info.model_uri


def load_logged_package(ref: str) -> Any:
    """The :class:`~defect_pipeline.ml.package.ModelPackage` of a logged model (run id, runs:/ or models:/ URI).

    A bare run id means that run's model (``runs:/<id>/model``): a training stage's or the
    thresholds run's. Loading goes through MLflow's pyfunc loader, which unpickles nothing here.
    """
    uri = f"runs:/{ref}/{MODEL_NAME}" if not ref.startswith(("runs:/", "models:/")) else ref
    try:
        loaded = mlflow.pyfunc.load_model(uri)
    except Exception as error:  # noqa: BLE001 - MLflow raises several types for a missing run/model
        raise ValueError(f"cannot load the MLflow model {uri}: {error}") from error
    python_model = loaded.unwrap_python_model()
    if not isinstance(python_model, DefectPyfuncModel):
        raise ValueError(f"{uri} is not a defect_pipeline model")
    return python_model._predictor.package
