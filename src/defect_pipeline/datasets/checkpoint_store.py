"""A Kedro dataset for a training stage's checkpoint folder.

Training writes checkpoints while it runs (every epoch, atomically), so the folder cannot be a
value a node returns at the end. Instead the catalog hands the node a
:class:`~defect_pipeline.ml.checkpoint.CheckpointStore` (``load``) pointing at the folder, and
the node returns the same store as its output (``save`` checks it is the same folder), which
gives Kedro the dependency ``stage1.checkpoints → stage2`` for ordering and for kedro-viz.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from defect_pipeline.ml.checkpoint import CheckpointStore


class CheckpointStoreDataset(AbstractDataset[CheckpointStore, CheckpointStore]):
    """``path``: the folder holding ``best.pt`` and ``last.pt``."""

    def __init__(self, path: str, metadata: dict[str, Any] | None = None):
        self._path = path
        self.metadata = metadata

    def load(self) -> CheckpointStore:
        return CheckpointStore(self._path)

    def save(self, data: CheckpointStore) -> None:
        if Path(data.path).resolve() != Path(self._path).resolve():
            raise DatasetError(f"checkpoint store {data.path} is not the catalog's folder {self._path}")
        Path(self._path).mkdir(parents=True, exist_ok=True)

    def _exists(self) -> bool:
        return (Path(self._path) / "best.pt").is_file()

    def _describe(self) -> dict[str, Any]:
        return {"path": self._path}
