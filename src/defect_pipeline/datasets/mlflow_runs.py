"""A read-only Kedro dataset: the MLflow runs of an experiment as a table.

``load`` returns :func:`mlflow.search_runs`' DataFrame (``run_id``, ``status``, ``start_time``,
``params.*``, ``metrics.*``, ``tags.*``) for the runs matching ``filter_string`` in
``experiment_name`` — by default the experiment kedro-mlflow set for this project
(``tracking.experiment.name`` in ``mlflow.yml``) on the tracking URI it set.
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
from kedro.io import AbstractDataset, DatasetError


class MlflowRunsDataset(AbstractDataset[None, pd.DataFrame]):
    """``experiment_name`` (None: the active experiment), ``filter_string``, ``max_results``."""

    def __init__(self, experiment_name: str | None = None, filter_string: str = "", max_results: int = 5000,
                 metadata: dict[str, Any] | None = None):
        self._experiment_name = experiment_name
        self._filter = filter_string
        self._max_results = max_results
        self.metadata = metadata

    def _experiment(self) -> Any:
        if self._experiment_name is not None:
            experiment = mlflow.get_experiment_by_name(self._experiment_name)
            if experiment is None:
                raise DatasetError(f"MLflow experiment {self._experiment_name!r} does not exist at "
                                   f"{mlflow.get_tracking_uri()}")
            return experiment
        from mlflow.tracking.fluent import _get_experiment_id

        return mlflow.get_experiment(_get_experiment_id())

    def load(self) -> pd.DataFrame:
        experiment = self._experiment()
        runs = mlflow.search_runs(experiment_ids=[experiment.experiment_id], filter_string=self._filter,
                                  max_results=self._max_results, output_format="pandas")
        runs.attrs["experiment_name"] = experiment.name
        runs.attrs["tracking_uri"] = mlflow.get_tracking_uri()
        return runs

    def save(self, data: None) -> None:
        raise DatasetError("MlflowRunsDataset is read-only: runs are written by `kedro run`, not saved")

    def _describe(self) -> dict[str, Any]:
        return {"experiment_name": self._experiment_name, "filter_string": self._filter}
