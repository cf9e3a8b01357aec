"""How images reach a model: the backbone's normalisation and the evaluation transform a package carries.

Train/serve parity in one place. At training time :func:`resolve_preprocessing` takes mean, std
and resize interpolation from timm's data config of the chosen backbone
(:func:`~defect_pipeline.ml.models.backbones.backbone_data_config`: e.g. ViT ``augreg`` weights use
mean/std 0.5, not ImageNet's), the stage builds its train and evaluation transforms with them, and
:meth:`Preprocessing.package_meta` writes them into the model meta together with the evaluation
transform itself (``eval_transform``: ``albumentations.to_dict`` of the ``Compose``). At prediction
time :func:`package_transform` rebuilds exactly that transform from the package
(``albumentations.from_dict``), so the predictor never re-implements it.

A package written before the transform was stored has no ``eval_transform``: it is rebuilt from the
meta's ``mean``/``std`` (ImageNet constants when absent) with the bilinear resize those packages were
trained with, and :func:`package_transform` says so in its note.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch

from defect_pipeline.ml.augment import IMAGENET_MEAN, IMAGENET_STD, build_transform

logger = logging.getLogger(__name__)

#: timm's interpolation names → OpenCV flags (timm's "random" and unknown names fall back to bilinear)
INTERPOLATIONS = {"nearest": cv2.INTER_NEAREST, "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC,
                  "area": cv2.INTER_AREA, "lanczos": cv2.INTER_LANCZOS4}
EVAL_TRANSFORM_KEY = "eval_transform"  # model meta key of the stored transform
LEGACY_NOTE = ("the model package has no stored evaluation transform (written before it was kept); using its "
               "mean/std ({source}) and a bilinear resize, as such packages were trained")


@dataclass(frozen=True)
class Preprocessing:
    """Normalisation and resize interpolation of a backbone, and where they came from."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    source: str = "ImageNet constants"

    @property
    def cv2_interpolation(self) -> int:
        return INTERPOLATIONS.get(self.interpolation, cv2.INTER_LINEAR)

    def transform(self, recipe: Sequence[Mapping[str, Any]] | None, *, image_size: int, train: bool,
                  seed: int | None = None) -> A.Compose:
        """:func:`~defect_pipeline.ml.augment.build_transform` with this normalisation and interpolation."""
        return build_transform(recipe, image_size=image_size, train=train, mean=self.mean, std=self.std,
                               interpolation=self.cv2_interpolation, seed=seed)

    def package_meta(self, eval_transform: A.Compose) -> dict[str, Any]:
        """Model-meta keys: ``mean``, ``std``, ``interpolation``, ``preprocessing_source`` and the transform."""
        return {"mean": list(self.mean), "std": list(self.std), "interpolation": self.interpolation,
                "preprocessing_source": self.source, EVAL_TRANSFORM_KEY: A.to_dict(eval_transform)}


def resolve_preprocessing(backbone: str) -> Preprocessing:
    """The backbone's mean, std and interpolation from timm's data config (``resolve_model_data_config``)."""
    from defect_pipeline.ml.models.backbones import backbone_data_config

    config = backbone_data_config(backbone)
    interpolation = str(config.get("interpolation") or "bilinear")
    if interpolation not in INTERPOLATIONS:
        logger.info("%s: timm's interpolation %r has no fixed OpenCV equivalent; resizing bilinearly", backbone,
                    interpolation)
        interpolation = "bilinear"
    return Preprocessing(tuple(float(v) for v in config["mean"]), tuple(float(v) for v in config["std"]),
                         interpolation, f"timm data config of {backbone}")


def package_transform(meta: Mapping[str, Any]) -> tuple[A.Compose, str | None]:
    """The evaluation transform stored in a model meta, rebuilt; and a note when it had to be reconstructed.

    Raises ``ValueError`` when a stored transform cannot be rebuilt (names the key and the reason).
    """
    stored = meta.get(EVAL_TRANSFORM_KEY)
    if stored is not None:
        try:
            return A.from_dict(stored), None
        except Exception as error:  # noqa: BLE001 - albumentations raises several types for a bad dict
            raise ValueError(f"the model meta's {EVAL_TRANSFORM_KEY} cannot be rebuilt by albumentations "
                             f"{A.__version__}: {error}; re-export the package with this version") from error
    has_stats = "mean" in meta and "std" in meta
    legacy = Preprocessing(tuple(meta.get("mean", IMAGENET_MEAN)), tuple(meta.get("std", IMAGENET_STD)))
    note = LEGACY_NOTE.format(source="from model.json" if has_stats else "ImageNet constants")
    return legacy.transform([], image_size=int(meta["image_size"]), train=False), note


def to_tensor(transform: A.Compose, image: np.ndarray) -> torch.Tensor:
    """``(3, S, S)`` float tensor of an RGB uint8 image through an evaluation transform."""
    return transform(image=np.ascontiguousarray(image))["image"]
