"""The ML library: label space, model, data, losses, schedules, metrics, training engine.

Plain PyTorch / timm / segmentation-models-pytorch / albumentations / torchmetrics code with no
Kedro or MLflow import, testable on its own. Kedro nodes in :mod:`defect_pipeline.pipelines`
turn validated parameters into keyword arguments for the functions here.
"""
