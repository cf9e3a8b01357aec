"""Using trained models: load packages and ensemble members by reference, and build their predictors.

A model is referenced by a package folder, a ``best.pt``/``last.pt`` checkpoint, or an MLflow run
id / ``runs:/`` / ``models:/`` URI (:func:`load_member`; MLflow references through a loader the
caller passes, so this module imports no MLflow). A tuned ``ensemble.json`` names its
members with their weights hashes (:func:`load_ensemble_members` refuses one that changed) and
its variants (members and test-time flips): :func:`variant_predictor` and
:func:`predictor_from_ensemble_spec` build the :class:`~defect_pipeline.ml.predict.Predictor` or
:class:`~defect_pipeline.ml.predict.EnsemblePredictor` of one variant. :func:`split_dataset` gives
the untransformed samples of a split in a model's label space, :func:`model_description`
the identity of a model for reports, and :func:`select_stage_model` which training stage's model
the steps after training use. Shared by the thresholds, evaluate, ensemble, inference and
export nodes, which pass plain values (no config objects reach this module).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from defect_pipeline.ml.dataset import ManifestDataset, labels_from_manifest
from defect_pipeline.ml.package import ModelPackage, ModelStore
from defect_pipeline.ml.postprocess import Thresholds
from defect_pipeline.ml.predict import EnsemblePredictor, Predictor
from defect_pipeline.ml.tiling import DEFAULT_OVERLAP

LoggedModelLoader = Callable[[str], ModelPackage]  # loads the package of an MLflow run id / runs:/ / models:/ URI


def apply_runtime(cpu_threads: int | None) -> None:
    """Machine-level settings before any model runs: torch intra-op threads (None: torch's default)."""
    if cpu_threads is not None:
        torch.set_num_threads(cpu_threads)


def select_stage_model(stores: Mapping[str, ModelStore], model_stage: str = "auto") -> tuple[str, str]:
    """Which training stage's model the steps after training use, and why (the stage and a sentence).

    Args:
        stores: stage name → that stage's model package, in training order (stage1, stage2, stage3).
        model_stage: a stage name (its model must exist), or ``auto``: the stage whose model was
            written last — the last stage that trained, or that was part of the latest run (a
            finished stage rewrites its package) —, the later stage on a tie. A stage skipped after
            an earlier stage was retrained is not taken: its model is older.

    Raises:
        ValueError: ``model_stage`` is not a stage of ``stores`` nor ``auto``.
        FileNotFoundError: the named stage, or for ``auto`` every stage, has no model package yet.
    """
    order = list(stores)
    if model_stage != "auto":
        if model_stage not in stores:
            raise ValueError(f"thresholds.model_stage must be auto or one of {', '.join(order)}; got {model_stage!r}")
        if not stores[model_stage].exists():
            raise FileNotFoundError(
                f"thresholds.model_stage is {model_stage}, but {stores[model_stage].path} holds no model package: run "
                f"`kedro run --pipeline={model_stage}` first, or set thresholds.model_stage: auto (the stage that "
                "trained last)")
        return model_stage, f"thresholds.model_stage: {model_stage}"
    written = {stage: when for stage, store in stores.items() if (when := store.written_ns()) is not None}
    if not written:
        raise FileNotFoundError(f"no training stage has a model package yet ({', '.join(s.path for s in stores.values())}"
                                f"): run `kedro run` (or `kedro run --pipeline={order[0]}` and the stages after it) "
                                "first")
    chosen = max(written, key=lambda stage: (written[stage], order.index(stage)))
    reason = f"thresholds.model_stage: auto, and {chosen} wrote its model last"
    older = [stage for stage in order[order.index(chosen) + 1:] if stage in written]
    if older:
        reason += (f"; {' and '.join(older)} {'has' if len(older) == 1 else 'have'} an older model (not retrained "
                   f"after {chosen}): set thresholds.model_stage: {older[-1]} to use it anyway")
    return chosen, reason


def split_dataset(package: ModelPackage, manifest: pd.DataFrame, raw_root: str, *, defect_classes: Sequence[str],
                  good_label: str, binarize_threshold: int, split: str) -> ManifestDataset:
    """The untransformed samples of ``split``, labelled in the model's label space.

    The model must know the data's classes: a package trained on other classes is refused with both
    lists named, instead of silently mapping labels to the wrong outputs.
    """
    data_labels = labels_from_manifest(manifest, defect_classes=list(defect_classes), good_label=good_label)
    if data_labels != package.labels:
        raise ValueError(f"the model was trained on classes {list(package.labels.image_classes)} but the data has "
                         f"{list(data_labels.image_classes)}; evaluate it on data with the same classes")
    dataset = ManifestDataset(manifest, root=raw_root, split=split, labels=package.labels,
                              transform=None, seg_mode=package.meta["seg_mode"],
                              binarize_threshold=binarize_threshold)
    if len(dataset) == 0:
        raise ValueError(f"the manifest has no accepted '{split}' sample (check data.split, or the split parameter)")
    return dataset


def model_description(package: ModelPackage) -> dict[str, Any]:
    """The identity of a model for reports: architecture, origin, weights hash, MLflow runs."""
    keys = ("backbone", "decoder", "image_size", "seg_mode", "stage", "epoch", "monitor", "best_metric",
            "manifest_hash", "source_checkpoint", "mlflow_run_id", "training_run_id")
    return {**{k: package.meta.get(k) for k in keys}, "input_mode": package.input_mode,
            "tta": list(package.meta.get("tta") or []),
            "weights_sha256": package.weights_sha256,
            "classes": list(package.labels.image_classes)}


def is_mlflow_reference(ref: str) -> bool:
    """A ``runs:/`` or ``models:/`` URI, or a bare MLflow run id (32 hex digits)."""
    return ref.startswith(("runs:/", "models:/")) or (len(ref) == 32 and all(c in "0123456789abcdef" for c in ref))


def load_member(ref: str, *, load_logged: LoggedModelLoader | None = None) -> ModelPackage:
    """A model given by reference: a package folder, a best.pt/last.pt, or an MLflow run id / URI.

    MLflow references are loaded by ``load_logged`` (the nodes pass
    :func:`defect_pipeline.tracking.pyfunc.load_logged_package`; this module never imports MLflow).
    """
    if is_mlflow_reference(ref):
        if load_logged is None:
            raise ValueError(f"model {ref!r} is an MLflow reference: pass load_logged to load it")
        return load_logged(ref)
    if not Path(ref).exists():
        raise FileNotFoundError(f"model {ref!r} not found: give a package folder (data/06_models/<stage>/model), a "
                                "best.pt/last.pt, or an MLflow run id / runs:/ or models:/ URI")
    return ModelPackage.from_path(ref)


def member_name(index: int, package: ModelPackage) -> str:
    return f"{index + 1}:{package.meta.get('backbone')}"


def variant_predictor(packages: list[ModelPackage], names: list[str], weights: list[float],
                      variant: dict[str, Any], thresholds: Any = None, *,
                      tile_overlap: float = DEFAULT_OVERLAP, device: str = "cpu", precision: str = "fp32") -> Any:
    """The predictor of one ensemble variant: its members (indices into ``packages``) with its flips
    (``tile_overlap``: for members that predict by sliding window), on ``device`` in ``precision``."""
    members = [Predictor(packages[i], tta=variant["tta"], thresholds=thresholds, tile_overlap=tile_overlap,
                         device=device, precision=precision)
               for i in variant["members"]]
    if len(members) == 1:
        return members[0]
    return EnsemblePredictor(members, weights=[weights[i] for i in variant["members"]], thresholds=thresholds,
                             names=[names[i] for i in variant["members"]])


def load_ensemble_members(spec: dict[str, Any], *, load_logged: LoggedModelLoader | None = None
                          ) -> list[ModelPackage]:
    """The member packages of a tuned ``ensemble.json``, refusing any whose weights changed since tuning."""
    packages = [load_member(member["ref"], load_logged=load_logged) for member in spec["members"]]
    for member, package in zip(spec["members"], packages):
        if package.weights_sha256 != member["weights_sha256"]:
            raise ValueError(f"ensemble member {member['ref']} has changed since the ensemble was tuned (weights "
                             "differ); run `kedro run --pipeline=ensemble` again")
    return packages


def predictor_from_ensemble_spec(spec: dict[str, Any], *, variant: str | None = None,
                                 packages: list[ModelPackage] | None = None,
                                 load_logged: LoggedModelLoader | None = None,
                                 tile_overlap: float = DEFAULT_OVERLAP, device: str = "cpu",
                                 precision: str = "fp32") -> Any:
    """The predictor of a tuned ``ensemble.json`` (its final variant unless ``variant`` names another).

    ``packages``: the members, already loaded; otherwise they are loaded here (``load_logged`` as in
    :func:`load_member`). ``device``/``precision``: where the members run.
    """
    chosen = spec["variants"][variant or spec["final_variant"]]
    members = packages if packages is not None else load_ensemble_members(spec, load_logged=load_logged)
    return variant_predictor(members, [m["name"] for m in spec["members"]], spec["weights"], chosen,
                             Thresholds.from_dict(chosen["thresholds"]), tile_overlap=tile_overlap, device=device,
                             precision=precision)
