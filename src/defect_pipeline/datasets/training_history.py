"""A read-only Kedro dataset: a training stage's ``history.csv``, with the ``steps.csv`` beside it.

``load`` returns a :class:`TrainingHistory`: the per-epoch table, the per-step table when a
``steps.csv`` lies in the same folder (None otherwise) and the path it was read from. The
``diagnose`` pipeline reads any stage's history through it; its ``filepath`` usually comes from
the command line (``--params diagnosis.history=<path>``, see the catalog), so an unset or wrong
path fails with ``hint``: what to pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from kedro.io import AbstractDataset, DatasetError

STEPS_FILE = "steps.csv"


@dataclass(frozen=True)
class TrainingHistory:
    """The epochs (``history.csv``), the optimizer steps (``steps.csv``, if any) and where they came from."""

    epochs: pd.DataFrame
    steps: pd.DataFrame | None
    path: str


class TrainingHistoryDataset(AbstractDataset[None, TrainingHistory]):
    """``filepath``: a ``history.csv`` written by a training stage (None: not given); ``hint``: how to give it."""

    def __init__(self, filepath: str | None, hint: str = "", metadata: dict[str, Any] | None = None):
        self._filepath = filepath
        self._hint = hint
        self.metadata = metadata

    def load(self) -> TrainingHistory:
        if not self._filepath:
            raise DatasetError(f"no history.csv given: {self._hint}")
        path = Path(self._filepath)
        if not path.is_file():
            raise DatasetError(f"{path} does not exist; point it at a history.csv written by a training stage "
                               f"(data/08_reporting/<stage>/history.csv): {self._hint}")
        steps = path.with_name(STEPS_FILE)
        return TrainingHistory(pd.read_csv(path), pd.read_csv(steps) if steps.is_file() else None, str(path))

    def save(self, data: None) -> None:
        raise DatasetError("TrainingHistoryDataset is read-only: a training stage writes history.csv")

    def _exists(self) -> bool:
        return bool(self._filepath) and Path(self._filepath).is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._filepath}
