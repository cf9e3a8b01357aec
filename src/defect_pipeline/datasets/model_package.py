"""A Kedro dataset for a model package folder, logged to MLflow as a pyfunc model on save.

``save`` takes a :class:`~defect_pipeline.ml.package.ModelPackage`, writes it (safetensors
weights, ``model.json``, ``thresholds.json``) to ``path`` and, when an MLflow run is active and
tracking is on for the pipeline, logs the folder as the run's ``model`` (see
:mod:`defect_pipeline.tracking.pyfunc`); ``model.json`` records that run
(``mlflow_run_id``) and the run that trained the weights (``training_run_id``, kept when a
package is re-saved with tuned thresholds).

``load`` returns a :class:`~defect_pipeline.ml.package.ModelStore` — the folder, not yet read —
so that a node can choose another model (``inference.checkpoint``) without the default one
having to exist, and a missing package fails with ``hint`` (what to run first). The class name
starts with ``Mlflow`` so that kedro-mlflow's ``disable_tracking.pipelines`` switches the
logging off like its own datasets.
"""

from __future__ import annotations

from typing import Any

import mlflow
from kedro.io import AbstractDataset

from defect_pipeline.ml.package import ModelPackage, ModelStore


class MlflowModelPackageDataset(AbstractDataset[ModelPackage, ModelStore]):
    """``path``: the package folder; ``log_model``: also log it as an MLflow pyfunc model; ``hint``."""

    def __init__(self, path: str, log_model: bool = True, hint: str = "", metadata: dict[str, Any] | None = None):
        self._path = path
        self._log_model = log_model
        self._hint = hint
        self._logging_activated = True
        self.metadata = metadata

    def load(self) -> ModelStore:
        return ModelStore(self._path, self._hint)

    def save(self, data: ModelPackage) -> None:
        run = mlflow.active_run()
        logging = self._log_model and self._logging_activated and run is not None
        if logging:
            data.meta["mlflow_run_id"] = run.info.run_id
            data.meta.setdefault("training_run_id", run.info.run_id)
        folder = data.save(self._path)
        if logging:
            from defect_pipeline.tracking.pyfunc import log_pyfunc_model

            log_pyfunc_model(folder)

    def _exists(self) -> bool:
        return ModelStore(self._path).exists()

    def _describe(self) -> dict[str, Any]:
        return {"path": self._path, "log_model": self._log_model}
