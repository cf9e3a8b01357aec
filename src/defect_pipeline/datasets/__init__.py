"""Custom Kedro datasets of the project."""

from defect_pipeline.datasets.checkpoint_store import CheckpointStoreDataset
from defect_pipeline.datasets.mlflow_runs import MlflowRunsDataset
from defect_pipeline.datasets.model_package import MlflowModelPackageDataset

__all__ = ["CheckpointStoreDataset", "MlflowModelPackageDataset", "MlflowRunsDataset"]
