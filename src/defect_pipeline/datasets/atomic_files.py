"""kedro-datasets' file datasets, each replacing its file atomically: a failed write leaves the previous file.

kedro-datasets open the final path for writing, so a write that fails half-way (no space left on
the device, a killed process) leaves a truncated report or manifest where the previous one was.
These subclasses write the same bytes to a temp file beside the target (``.<name>.<random>.tmp``)
and rename it over the target once it is complete and fsync'ed
(:func:`defect_pipeline.ml.checkpoint.atomic_write`); a full disk raises
:class:`~defect_pipeline.ml.checkpoint.DiskFullError`, naming the file and the free space. The
catalog uses them for every JSON, CSV, Parquet, text and figure file.

Only local, unversioned, single-file saves are redirected (the parent's own ``save`` writes the
temp path while the dataset's ``_filepath`` points at it); anything else is saved as the parent
class does. kedro-mlflow's ``MlflowArtifactDataset`` wraps these like any other dataset.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from kedro_datasets.json.json_dataset import JSONDataset
from kedro_datasets.matplotlib.matplotlib_dataset import MatplotlibDataset
from kedro_datasets.pandas.csv_dataset import CSVDataset
from kedro_datasets.pandas.parquet_dataset import ParquetDataset
from kedro_datasets.text.text_dataset import TextDataset

from defect_pipeline.ml.checkpoint import atomic_write


class AtomicSave:
    """Mixin (before the kedro-datasets class): ``save`` goes through a temp file and a rename."""

    def _writes_one_file(self, data: Any) -> bool:
        return True

    def save(self, data: Any) -> None:
        parent_save = super().save.__wrapped__  # the parent's own save, without Kedro's error wrapper
        if self._protocol != "file" or self._version is not None or not self._writes_one_file(data):
            return parent_save(self, data)
        target = Path(str(self._filepath))
        original = self._filepath
        with atomic_write(target) as tmp:
            self._filepath = PurePosixPath(tmp.as_posix())
            try:
                parent_save(self, data)
            finally:
                self._filepath = original
        self._invalidate_cache()
        return None


class AtomicJSONDataset(AtomicSave, JSONDataset):
    """``json.JSONDataset``, written atomically."""


class AtomicCSVDataset(AtomicSave, CSVDataset):
    """``pandas.CSVDataset``, written atomically."""


class AtomicParquetDataset(AtomicSave, ParquetDataset):
    """``pandas.ParquetDataset``, written atomically."""


class AtomicTextDataset(AtomicSave, TextDataset):
    """``text.TextDataset``, written atomically."""


class AtomicMatplotlibDataset(AtomicSave, MatplotlibDataset):
    """``matplotlib.MatplotlibDataset``, written atomically (a single figure; a list or dict of figures
    is a folder and is saved as the parent class does)."""

    def _writes_one_file(self, data: Any) -> bool:
        return not isinstance(data, list | dict)
