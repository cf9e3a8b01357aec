"""A Kedro dataset for a model package folder, logged to MLflow as a pyfunc model on save.

``save`` writes the :class:`~defect_pipeline.ml.predict.ModelPackage` (safetensors weights,
``model.json``, ``thresholds.json``) to ``path`` and, when an MLflow run is active and tracking
is on for the pipeline, logs the folder as the run's ``model`` (see
:mod:`defect_pipeline.tracking.pyfunc`). The class name starts with ``Mlflow`` so that
kedro-mlflow's ``disable_tracking.pipelines`` switches that logging off like its own datasets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
from kedro.io import AbstractDataset

from defect_pipeline.ml.predict import ModelPackage


class MlflowModelPackageDataset(AbstractDataset[ModelPackage, ModelPackage]):
    """``path``: the package folder; ``log_model``: also log it as an MLflow pyfunc model."""

    def __init__(self, path: str, log_model: bool = True, metadata: dict[str, Any] | None = None):
        self._path = path
        self._log_model = log_model
        self._logging_activated = True
        self.metadata = metadata

    def load(self) -> ModelPackage:
        return ModelPackage.load(self._path)

    def save(self, data: ModelPackage) -> None:
        folder = data.save(self._path)
        if self._log_model and self._logging_activated and mlflow.active_run() is not None:
            from defect_pipeline.tracking.pyfunc import log_pyfunc_model

            log_pyfunc_model(folder)

    def _exists(self) -> bool:
        return (Path(self._path) / "model.json").is_file()

    def _describe(self) -> dict[str, Any]:
        return {"path": self._path, "log_model": self._log_model}
