"""A Kedro dataset for the ONNX export of a model package: ``model.onnx`` and ``model.onnx.json``.

``path`` is the package folder the export belongs to (the ONNX runner looks for it there, next to
the weights it was exported from). ``save`` takes an :class:`~defect_pipeline.ml.export.OnnxExport`
and writes both files (the model through a temp name and a rename); ``load`` reads them back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset

from defect_pipeline.ml.export import OnnxExport
from defect_pipeline.ml.package import ONNX_FILE


class OnnxModelDataset(AbstractDataset[OnnxExport, OnnxExport]):
    """``path``: the model package folder that holds (or will hold) ``model.onnx``."""

    def __init__(self, path: str, metadata: dict[str, Any] | None = None):
        self._path = path
        self.metadata = metadata

    def load(self) -> OnnxExport:
        return OnnxExport.load(self._path)

    def save(self, data: OnnxExport) -> None:
        data.save(self._path)

    def _exists(self) -> bool:
        return (Path(self._path) / ONNX_FILE).is_file()

    def _describe(self) -> dict[str, Any]:
        return {"path": self._path}
