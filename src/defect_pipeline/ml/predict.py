"""A trained model as a self-contained package, and prediction with explicit thresholds.

A :class:`ModelPackage` is a folder anyone can load without our training code's state:

* ``weights.safetensors`` — the model's tensors (safetensors: loading never runs code);
* ``model.json`` — what rebuilds the network (backbone, decoder, decoder width, segmentation
  mode, input size, normalisation), the label space and where the weights came from (stage,
  epoch, monitored metric, data-manifest hash);
* ``thresholds.json`` — the operating point used at prediction time (see :class:`Thresholds`).

:class:`Predictor` turns images of any size and mode into labels, class scores and masks at the
image's own size, applying the thresholds. It is the one prediction path: the MLflow pyfunc
model and the batch-inference pipeline both go through it.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from defect_pipeline.ml.augment import IMAGENET_MEAN, IMAGENET_STD
from defect_pipeline.ml.labels import LabelSpace
from defect_pipeline.ml.model import MultitaskNet, create_model

PACKAGE_FORMAT = 1
WEIGHTS_FILE = "weights.safetensors"
MODEL_FILE = "model.json"
THRESHOLDS_FILE = "thresholds.json"


@dataclass(frozen=True)
class Thresholds:
    """The operating point applied to a model's probabilities.

    Attributes:
        image: an image is a defect when ``1 - p(good)`` is at least this (datasets without
            defect-free images: the label is always the most probable defect class).
        pixel: a pixel is a defect when ``1 - p(background)`` (binary: ``p(defect)``) is at
            least this.
        min_area: defect regions (8-connected) smaller than this many pixels, measured at the
            image's own size, are removed from the mask.
        source: where the values come from (``default`` or a tuning run), recorded with every
            prediction.
    """

    image: float = 0.5
    pixel: float = 0.5
    min_area: int = 0
    source: str = "default: 0.5 / 0.5 / 0 px (not tuned)"

    def __post_init__(self) -> None:
        for name in ("image", "pixel"):
            value = getattr(self, name)
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"thresholds.{name} must be within [0, 1], got {value}")
        if int(self.min_area) < 0:
            raise ValueError(f"thresholds.min_area must be >= 0, got {self.min_area}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Thresholds:
        known = {k: data[k] for k in ("image", "pixel", "min_area", "source") if k in data}
        return cls(**known)


@dataclass
class ModelPackage:
    """Weights, the description that rebuilds the network, and the thresholds."""

    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any]
    thresholds: Thresholds = field(default_factory=Thresholds)

    @property
    def labels(self) -> LabelSpace:
        return LabelSpace.from_dict(self.meta["labels"])

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any], *, source: str,
                        thresholds: Thresholds | None = None) -> ModelPackage:
        """The package of a training checkpoint (``best.pt``/``last.pt`` as the engine writes them)."""
        model_cfg = state.get("config", {}).get("model", {})
        meta = {
            "format": PACKAGE_FORMAT,
            **state["model_meta"],
            "decoder_channels": int(model_cfg.get("decoder_channels", 64)),
            "labels": state["labels"],
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "stage": state.get("stage"),
            "epoch": state.get("epoch"),
            "global_step": state.get("global_step"),
            "monitor": state.get("monitor"),
            "best_metric": state.get("best_metric"),
            "manifest_hash": state.get("manifest_hash"),
            "source_checkpoint": source,
        }
        weights = {k: v.detach().cpu().contiguous() for k, v in state["model"].items()}
        return cls(weights, meta, thresholds or Thresholds())

    def build_model(self) -> MultitaskNet:
        """The network with these weights, in eval mode on the CPU."""
        labels = self.labels
        with warnings.catch_warnings():  # the weights are loaded right below: random init is not a concern
            warnings.filterwarnings("ignore", message=".*random initialisation")
            net = create_model(self.meta["backbone"], num_image_classes=labels.num_image_classes,
                               num_seg_classes=labels.num_seg_classes, seg_mode=self.meta["seg_mode"],
                               decoder=self.meta["decoder"], decoder_channels=int(self.meta["decoder_channels"]),
                               image_size=int(self.meta["image_size"]), pretrained=False)
        net.load_state_dict(self.state_dict)
        return net.eval()

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the three files; each goes to a temp name first, so no half-written file remains."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{WEIGHTS_FILE}.tmp"
        save_file(self.state_dict, str(tmp), metadata={"format": str(PACKAGE_FORMAT)})
        os.replace(tmp, folder / WEIGHTS_FILE)
        _write_json(folder / MODEL_FILE, self.meta)
        _write_json(folder / THRESHOLDS_FILE, self.thresholds.to_dict())
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> ModelPackage:
        """Read a package folder; a missing file is named in the error."""
        from safetensors.torch import load_file

        folder = Path(folder)
        for name in (WEIGHTS_FILE, MODEL_FILE):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"model package {folder} has no {name}; export it again from a checkpoint")
        meta = json.loads((folder / MODEL_FILE).read_text())
        if meta.get("format") != PACKAGE_FORMAT:
            raise ValueError(f"model package {folder} has format {meta.get('format')!r}; this version reads "
                             f"{PACKAGE_FORMAT}")
        thresholds_file = folder / THRESHOLDS_FILE
        thresholds = Thresholds.from_dict(json.loads(thresholds_file.read_text())) if thresholds_file.is_file() \
            else Thresholds()
        return cls(load_file(str(folder / WEIGHTS_FILE), device="cpu"), meta, thresholds)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """An ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)`` array as ``(H, W, 3)`` uint8.

    Alpha is dropped; 16-bit and float images are scaled to 0..255 (floats are taken as 0..1).
    """
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"an image must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got shape {array.shape}")
    array = array[:, :, :3]
    if array.dtype == np.uint16:
        array = (array / 257.0).round()
    elif np.issubdtype(array.dtype, np.floating):
        array = np.clip(array, 0.0, 1.0) * 255.0
    return np.ascontiguousarray(array.astype(np.uint8))


@dataclass
class Prediction:
    """One image's result at its own size."""

    label: str
    scores: dict[str, float]
    defect_score: float
    mask: np.ndarray  # (H, W) uint8: 0 background, 1 + i defect class i (binary: 1 defect)
    defect_area: int  # defect pixels after min_area filtering

    def row(self) -> dict[str, Any]:
        """Flat columns: ``label``, ``defect_score``, ``score_<class>``, ``defect_area``."""
        return {"label": self.label, "defect_score": self.defect_score,
                **{f"score_{name}": value for name, value in self.scores.items()},
                "defect_area": self.defect_area}


def remove_small_regions(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Set 8-connected defect regions smaller than ``min_area`` pixels to background."""
    if min_area <= 1 or not mask.any():
        return mask
    count, components, stats, _ = cv2.connectedComponentsWithStats((mask > 0).astype(np.uint8), connectivity=8)
    small = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] < min_area)
    small = small[small != 0]  # component 0 is the background
    if small.size == 0:
        return mask
    out = mask.copy()
    out[np.isin(components, small)] = 0
    return out


class Predictor:
    """Batched prediction of a :class:`ModelPackage` on images of any size.

    Each image is resized to the model's input size (bilinear), normalised as in training, and
    the segmentation probabilities are resized back to the image's size before thresholding.
    """

    def __init__(self, package: ModelPackage, *, thresholds: Thresholds | None = None, device: str = "cpu"):
        self.package = package
        self.labels = package.labels
        self.thresholds = thresholds or package.thresholds
        self.device = device
        self.model = package.build_model().to(device)
        self.image_size = int(package.meta["image_size"])
        self._mean = np.asarray(package.meta.get("mean", IMAGENET_MEAN), dtype=np.float32) * 255.0
        self._std = np.asarray(package.meta.get("std", IMAGENET_STD), dtype=np.float32) * 255.0

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, **kwargs: Any) -> Predictor:
        return cls(ModelPackage.load(folder), **kwargs)

    def _tensor(self, image: np.ndarray) -> torch.Tensor:
        resized = cv2.resize(image, (self.image_size, self.image_size), interpolation=cv2.INTER_LINEAR)
        normalised = (resized.astype(np.float32) - self._mean) / self._std
        return torch.from_numpy(normalised.transpose(2, 0, 1).copy())

    @torch.no_grad()
    def predict(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        """Predictions for a batch of images (any size, grayscale/RGB/RGBA, uint8/uint16/float)."""
        if len(images) == 0:
            return []
        rgb = [as_rgb_uint8(image) for image in images]
        batch = torch.stack([self._tensor(image) for image in rgb]).to(self.device)
        out = self.model(batch)
        class_probs = torch.softmax(out.cls_logits.float(), dim=1).cpu().numpy()
        seg = out.seg_logits.float()
        seg_probs = (torch.sigmoid(seg) if self.package.meta["seg_mode"] == "binary"
                     else torch.softmax(seg, dim=1)).cpu().numpy()
        return [self._decide(class_probs[i], seg_probs[i], rgb[i].shape[:2]) for i in range(len(rgb))]

    def _decide(self, class_probs: np.ndarray, seg_probs: np.ndarray, shape: tuple[int, int]) -> Prediction:
        names = self.labels.image_classes
        scores = {name: float(p) for name, p in zip(names, class_probs, strict=True)}
        if self.labels.has_good:
            defect_score = 1.0 - scores[self.labels.good_label]
            defect_probs = class_probs[1:]
            label = (self.labels.defect_classes[int(np.argmax(defect_probs))]
                     if defect_score >= self.thresholds.image else self.labels.good_label)
        else:
            defect_score = 1.0
            label = names[int(np.argmax(class_probs))]
        height, width = shape
        # (C, h, w) → (H, W, C) at the image's size
        probs = cv2.resize(np.ascontiguousarray(seg_probs.transpose(1, 2, 0)), (width, height), interpolation=cv2.INTER_LINEAR)
        probs = probs.reshape(height, width, -1)
        if probs.shape[2] == 1:
            mask = (probs[:, :, 0] >= self.thresholds.pixel).astype(np.uint8)
        else:
            is_defect = (1.0 - probs[:, :, 0]) >= self.thresholds.pixel
            mask = np.where(is_defect, 1 + np.argmax(probs[:, :, 1:], axis=2), 0).astype(np.uint8)
        mask = remove_small_regions(mask, int(self.thresholds.min_area))
        return Prediction(label, scores, float(defect_score), mask, int((mask > 0).sum()))
