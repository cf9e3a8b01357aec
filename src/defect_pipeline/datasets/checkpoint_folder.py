"""A read-only Kedro dataset: a folder of checkpoints, handed to the node as a path.

The ``inspect_checkpoints`` pipeline lists every checkpoint file under the folder, recursively,
and must report a corrupt, foreign or unsafe file as a row instead of failing on it, so the
files are read one by one by :mod:`defect_pipeline.ml.inspection` (weights-only), not here:
``load`` returns the folder (a :class:`pathlib.Path`), like
:class:`~defect_pipeline.datasets.CheckpointStoreDataset` hands a stage its checkpoint store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError


class CheckpointFolderDataset(AbstractDataset[None, Path]):
    """``path``: the folder searched (recursively) for ``*.pt`` / ``*.pth`` / ``*.safetensors``."""

    def __init__(self, path: str, metadata: dict[str, Any] | None = None):
        self._path = path
        self.metadata = metadata

    def load(self) -> Path:
        return Path(self._path)

    def save(self, data: None) -> None:
        raise DatasetError("CheckpointFolderDataset is read-only: training stages write the checkpoints")

    def _exists(self) -> bool:
        return Path(self._path).is_dir()

    def _describe(self) -> dict[str, Any]:
        return {"path": self._path}
