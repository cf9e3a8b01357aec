"""Custom Kedro datasets of the project."""

from defect_pipeline.datasets.atomic_files import (
    AtomicCSVDataset,
    AtomicJSONDataset,
    AtomicMatplotlibDataset,
    AtomicParquetDataset,
    AtomicTextDataset,
)
from defect_pipeline.datasets.checkpoint_folder import CheckpointFolderDataset
from defect_pipeline.datasets.checkpoint_store import CheckpointStoreDataset
from defect_pipeline.datasets.figure_folder import FigureFolderDataset
from defect_pipeline.datasets.mlflow_runs import MlflowRunsDataset
from defect_pipeline.datasets.model_package import MlflowModelPackageDataset
from defect_pipeline.datasets.onnx_model import OnnxModelDataset
from defect_pipeline.datasets.training_history import TrainingHistory, TrainingHistoryDataset

__all__ = ["AtomicCSVDataset", "AtomicJSONDataset", "AtomicMatplotlibDataset", "AtomicParquetDataset",
           "AtomicTextDataset", "CheckpointFolderDataset", "CheckpointStoreDataset", "FigureFolderDataset",
           "MlflowModelPackageDataset", "MlflowRunsDataset", "OnnxModelDataset", "TrainingHistory",
           "TrainingHistoryDataset"]
