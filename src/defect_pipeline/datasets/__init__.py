"""Custom Kedro datasets of the project."""

from defect_pipeline.datasets.checkpoint_store import CheckpointStoreDataset

__all__ = ["CheckpointStoreDataset"]
