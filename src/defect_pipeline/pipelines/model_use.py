"""Helpers shared by the nodes that use a trained model: thresholds, evaluate, inference, export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import torch

from defect_pipeline.config import DataParams, RuntimeParams
from defect_pipeline.ml.dataset import ManifestDataset, labels_from_manifest
from defect_pipeline.ml.predict import ModelPackage


def apply_runtime(runtime: dict[str, Any]) -> None:
    """Machine-level settings (torch threads) before any model runs."""
    cfg = RuntimeParams.model_validate(runtime)
    if cfg.cpu_threads is not None:
        torch.set_num_threads(cfg.cpu_threads)


def split_dataset(package: ModelPackage, manifest: pd.DataFrame, raw_source: dict[str, Any],
                  scan_summary: dict[str, Any], data: dict[str, Any], split: str) -> ManifestDataset:
    """The untransformed samples of ``split``, labelled in the model's label space.

    The model must know the data's classes: a package trained on other classes is refused with both
    lists named, instead of silently mapping labels to the wrong outputs.
    """
    data_cfg = DataParams.model_validate(data)
    data_labels = labels_from_manifest(manifest, defect_classes=list(scan_summary["classes"]),
                                       good_label=data_cfg.good_label)
    if data_labels != package.labels:
        raise ValueError(f"the model was trained on classes {list(package.labels.image_classes)} but the data has "
                         f"{list(data_labels.image_classes)}; evaluate it on data with the same classes")
    dataset = ManifestDataset(manifest, root=raw_source["raw_root"], split=split, labels=package.labels,
                              transform=None, seg_mode=package.meta["seg_mode"],
                              binarize_threshold=data_cfg.masks.binarize_threshold)
    if len(dataset) == 0:
        raise ValueError(f"the manifest has no accepted '{split}' sample (check data.split, or the split parameter)")
    return dataset


def model_description(package: ModelPackage) -> dict[str, Any]:
    """The identity of a model for reports: architecture, origin, weights hash, MLflow runs."""
    keys = ("backbone", "decoder", "image_size", "seg_mode", "stage", "epoch", "monitor", "best_metric",
            "manifest_hash", "source_checkpoint", "mlflow_run_id", "training_run_id")
    return {**{k: package.meta.get(k) for k in keys}, "weights_sha256": package.weights_sha256,
            "classes": list(package.labels.image_classes)}


def load_member(ref: str) -> ModelPackage:
    """A model given by reference: a package folder, a best.pt/last.pt, or an MLflow run id / URI."""
    from defect_pipeline.tracking.pyfunc import is_mlflow_reference, load_logged_package

    if is_mlflow_reference(ref):
        return load_logged_package(ref)
    if not Path(ref).exists():
        raise FileNotFoundError(f"model {ref!r} not found: give a package folder (data/06_models/<stage>/model), a "
                                "best.pt/last.pt, or an MLflow run id / runs:/ or models:/ URI")
    return ModelPackage.from_path(ref)


def member_name(index: int, package: ModelPackage) -> str:
    return f"{index + 1}:{package.meta.get('backbone')}"


def variant_predictor(packages: list[ModelPackage], names: list[str], weights: list[float],
                      variant: dict[str, Any], thresholds: Any = None) -> Any:
    """The predictor of one ensemble variant: its members (indices into ``packages``) with its flips."""
    from defect_pipeline.ml.predict import EnsemblePredictor, Predictor

    members = [Predictor(packages[i], tta=variant["tta"], thresholds=thresholds) for i in variant["members"]]
    if len(members) == 1:
        return members[0]
    return EnsemblePredictor(members, weights=[weights[i] for i in variant["members"]], thresholds=thresholds,
                             names=[names[i] for i in variant["members"]])


def load_ensemble_members(spec: dict[str, Any]) -> list[ModelPackage]:
    """The member packages of a tuned ``ensemble.json``, refusing any whose weights changed since tuning."""
    packages = [load_member(member["ref"]) for member in spec["members"]]
    for member, package in zip(spec["members"], packages):
        if package.weights_sha256 != member["weights_sha256"]:
            raise ValueError(f"ensemble member {member['ref']} has changed since the ensemble was tuned (weights "
                             "differ); run `kedro run --pipeline=ensemble` again")
    return packages


def predictor_from_ensemble_spec(spec: dict[str, Any], *, variant: str | None = None,
                                 packages: list[ModelPackage] | None = None) -> Any:
    """The predictor of a tuned ``ensemble.json`` (its final variant unless ``variant`` names another)."""
    from defect_pipeline.ml.predict import Thresholds

    chosen = spec["variants"][variant or spec["final_variant"]]
    return variant_predictor(packages if packages is not None else load_ensemble_members(spec),
                             [m["name"] for m in spec["members"]], spec["weights"], chosen,
                             Thresholds.from_dict(chosen["thresholds"]))
