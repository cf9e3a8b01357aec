"""The trained model as an MLflow pyfunc model, thresholds bundled.

``mlflow.pyfunc.load_model(uri).predict(x)`` accepts

* a ``pandas.DataFrame`` with a ``path`` column of image files (any size, grayscale/RGB/RGBA), or
* a list of images / an ``(N, H, W[, C])`` array,

and returns a DataFrame, one row per image: ``label``, ``defect_score``, ``score_<class>`` per
image class, ``defect_area`` (pixels), ``mask`` (an ``(H, W)`` uint8 array at the image's size:
0 background, ``1 + i`` defect class ``i``), ``status`` (``ok`` or ``error``) and ``error`` (the
reason a file could not be read; such rows carry no prediction). The thresholds come from the
package's ``thresholds.json``; the ``thresholds`` column records which ones were applied.

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
        batch_size = int((params or {}).get("batch_size", 16))
        return predict_frame(self._predictor, model_input, batch_size=batch_size)


def _inputs(model_input: Any) -> tuple[list[str | None], list[Any]]:
    """(paths or None, images or paths to read) from a DataFrame of paths or an array/list of images."""
    if isinstance(model_input, pd.DataFrame):
        column = next((c for c in ("path", "image_path") if c in model_input.columns), None)
        if column is None:
            raise ValueError(f"a DataFrame input needs a 'path' column of image files; got columns "
                             f"{list(model_input.columns)}")
        paths = [str(p) for p in model_input[column]]
        return list(paths), list(paths)
    if isinstance(model_input, np.ndarray) and model_input.ndim in (2, 3) and model_input.dtype != object:
        model_input = [model_input] if model_input.ndim == 2 else list(model_input)
    items = list(model_input)
    return [None] * len(items), items


def predict_frame(predictor: Any, model_input: Any, *, batch_size: int = 16) -> pd.DataFrame:
    """Predict a DataFrame of paths or a batch of arrays; unreadable files become ``error`` rows."""
    from defect_pipeline.ml.inference import stream_predictions

    paths, items = _inputs(model_input)
    rows: list[dict[str, Any]] = [{"path": path, "status": "error", "error": "",
                                   "thresholds": predictor.thresholds.source} for path in paths]
    for index, prediction, error, _ in stream_predictions(enumerate(items), predictor, batch_size=batch_size):
        if prediction is None:
            rows[index]["error"] = error
        else:
            rows[index].update(prediction.row(), mask=prediction.mask, status="ok")
    frame = pd.DataFrame(rows)
    if paths and all(p is None for p in paths):
        frame = frame.drop(columns="path")
    return frame


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
