"""A Kedro dataset for a folder that a training stage writes figures into while it runs.

The validation previews (``val_preview_epoch<N>.png``) are drawn every few epochs, during the
stage's one node, so they cannot be values the node returns at the end. Like
:class:`~defect_pipeline.datasets.CheckpointStoreDataset` for checkpoints, the catalog hands the
node the folder — a :class:`~defect_pipeline.ml.val_preview.FigureFolder` — and the location stays
in ``catalog.yml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from defect_pipeline.ml.val_preview import FigureFolder


class FigureFolderDataset(AbstractDataset[None, FigureFolder]):
    """``path``: the folder; ``dpi``: the resolution figures are saved at."""

    def __init__(self, path: str, dpi: int = 90, metadata: dict[str, Any] | None = None):
        self._path = path
        self._dpi = int(dpi)
        self.metadata = metadata

    def load(self) -> FigureFolder:
        return FigureFolder(self._path, dpi=self._dpi)

    def save(self, data: None) -> None:
        raise DatasetError("FigureFolderDataset is an input: the training stage writes its figures into the folder")

    def _exists(self) -> bool:
        return Path(self._path).is_dir()

    def _describe(self) -> dict[str, Any]:
        return {"path": self._path, "dpi": self._dpi}
