"""Prediction with a model package: images of any size in, thresholded labels, scores and masks out.

:class:`Predictor` turns images of any size and mode (:func:`as_rgb_uint8`) into labels, class
scores and masks at the image's own size: each image goes through the evaluation transform of
training, rebuilt from the package (:meth:`Predictor.preprocess`,
:mod:`defect_pipeline.ml.preprocess`), the network runs in PyTorch or onnxruntime, optional
test-time flips (:data:`TTA_FLIPS`) are averaged, and the thresholds are applied by
:func:`~defect_pipeline.ml.postprocess.decide`. A package whose model meta says
``input_mode: tile`` (trained on crops at native scale; ``image_size`` is then the tile size) is
predicted by sliding window instead (:mod:`defect_pipeline.ml.tiling`): tiles in batches,
blended back into full-resolution probabilities, the image label from the most defective tile.
:class:`EnsemblePredictor` averages several predictors' probabilities (members checked by
:func:`check_same_classes`). It is the one prediction path: threshold tuning, evaluation, the
MLflow pyfunc model and the batch-inference pipeline all go through it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import cv2
import numpy as np
import torch

from defect_pipeline.ml.device import autocast
from defect_pipeline.ml.labels import LabelSpace
from defect_pipeline.ml.onnx_runner import OnnxRunner
from defect_pipeline.ml.package import ModelPackage
from defect_pipeline.ml.postprocess import Prediction, RawOutput, Thresholds, decide
from defect_pipeline.ml.preprocess import package_transform, to_tensor
from defect_pipeline.ml.tiling import (
    DEFAULT_OVERLAP,
    Stitcher,
    TileGrid,
    check_overlap,
    image_class_probs,
    pad_to_tile,
    tile_defect_scores,
)

logger = logging.getLogger(__name__)


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


# test-time augmentation: flip name → the dimensions of an (N, C, H, W) batch it flips
TTA_FLIPS = {"hflip": (3,), "vflip": (2,)}


def check_tta(tta: Sequence[str]) -> tuple[str, ...]:
    unknown = [t for t in tta if t not in TTA_FLIPS]
    if unknown:
        raise ValueError(f"unknown test-time augmentation {unknown}; use any of {sorted(TTA_FLIPS)}")
    if len(set(tta)) != len(tta):
        raise ValueError(f"test-time augmentation lists a flip twice: {list(tta)}")
    return tuple(tta)


class _Decisions:
    """Thresholded decisions on top of ``probabilities`` (single models and ensembles alike)."""

    labels: LabelSpace
    thresholds: Thresholds

    def probabilities(self, images: Sequence[np.ndarray]) -> list[RawOutput]:
        raise NotImplementedError

    def iter_probabilities(self, images: Sequence[np.ndarray]) -> Iterator[RawOutput]:
        """``probabilities`` one image at a time, for callers that use each output before the next: a
        tiling predictor then holds one image's full-resolution maps at a time, not a batch's."""
        yield from self.probabilities(images)

    def decide(self, raw: RawOutput, thresholds: Thresholds | None = None) -> Prediction:
        return decide(raw, self.labels, thresholds or self.thresholds)

    def predict(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        """Predictions for a batch of images (any size, grayscale/RGB/RGBA, uint8/uint16/float)."""
        return [self.decide(raw) for raw in self.iter_probabilities(images)]


class Predictor(_Decisions):
    """Batched prediction of a :class:`ModelPackage` on images of any size.

    ``input_mode`` ``resize`` (model meta without ``input_mode``, or ``"resize"``): each image is
    resized to the model's input size (bilinear), normalised as in training, and the segmentation
    probabilities are resized back to the image's size before thresholding.

    ``input_mode`` ``tile``: each image is cut into ``image_size`` tiles at its own scale that
    overlap by ``tile_overlap`` (a fraction of the tile), the network runs on ``tile_batch_size``
    tiles at a time, and the tiles' probabilities are blended into full-resolution maps
    (:class:`~defect_pipeline.ml.tiling.Stitcher`); the class probabilities are those of the most
    defective tile (:func:`~defect_pipeline.ml.tiling.image_class_probs`). Memory: one batch of
    tiles plus the image's full-size probability maps, whatever the image size.

    ``backend="onnx"`` runs the package's exported ``model.onnx`` (``onnx_precision="int8"``: its
    quantised ``model.int8.onnx``) with onnxruntime instead of PyTorch (same preprocessing and
    decisions), on ``onnx_provider`` (``auto``: TensorRT or CUDA when ``device`` is CUDA and
    onnxruntime-gpu offers them, else the CPU) with ``onnx_threads`` intra-op threads (None:
    onnxruntime's default, one per physical core). ``runner`` replaces the network with any
    ``batch -> (seg_logits, cls_logits)`` callable (the export checks its in-memory models this way).

    ``tta``: test-time flips (``hflip``, ``vflip``). Each flipped batch is predicted, its
    probabilities flipped back, and all views (the plain one included) averaged, in mask space
    at the model's input size, before resizing to the image (tile mode: per tile, before
    stitching) — 1 + len(tta) forward passes. ``None``: the package's own (model meta ``tta``,
    written by threshold tuning with ``thresholds.tta``: its thresholds were tuned on those views).

    ``device`` and ``precision`` (``fp32``, ``bf16``, ``fp16``): where the PyTorch network runs and its
    autocast (:func:`~defect_pipeline.ml.device.resolve_prediction_device` turns the ``trainer`` block into
    both). On CUDA, batches are copied from pinned memory without blocking. The probabilities always come
    back to the CPU in fp32. A predictor pickles as its package and options (worker processes rebuild it,
    :meth:`on` moves it to their device).
    """

    def __init__(self, package: ModelPackage, *, thresholds: Thresholds | None = None, device: str = "cpu",
                 backend: str = "torch", onnx_threads: int | None = None, tta: Sequence[str] | None = None,
                 tile_overlap: float = DEFAULT_OVERLAP, tile_batch_size: int = 8, precision: str = "fp32",
                 onnx_precision: str = "fp32", onnx_provider: str = "auto",
                 runner: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None):
        if backend not in ("torch", "onnx"):
            raise ValueError(f"backend must be 'torch' or 'onnx', got {backend!r}")
        if precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
        if tta is None:
            tta = package.meta.get("tta") or ()
        self._options = {"thresholds": thresholds, "device": device, "backend": backend, "onnx_threads": onnx_threads,
                         "tta": tuple(tta), "tile_overlap": tile_overlap, "tile_batch_size": tile_batch_size,
                         "precision": precision, "onnx_precision": onnx_precision, "onnx_provider": onnx_provider}
        self.input_mode = package.input_mode
        self.input_scale = float(package.meta.get("input_scale", 1.0))  # crops of images rescaled by this
        if not 0.0 < self.input_scale <= 4.0:
            raise ValueError(f"input_scale must be in (0, 4], got {self.input_scale} in the model meta")
        if int(tile_batch_size) < 1:
            raise ValueError(f"tile_batch_size must be >= 1, got {tile_batch_size}")
        self.tile_overlap = check_overlap(tile_overlap)
        self.tile_batch_size = int(tile_batch_size)
        self.package = package
        self.labels = package.labels
        self.thresholds = thresholds or package.thresholds
        self.device = device if backend == "torch" else "cpu"
        self.backend = backend
        self.image_size = int(package.meta["image_size"])
        self.seg_mode = package.meta["seg_mode"]
        self.tta = check_tta(tta)
        self._binary = self.seg_mode == "binary"
        self.transform, note = package_transform(package.meta)  # the evaluation transform of training
        if note:
            logger.info("%s: %s", package.folder or "model package", note)
        self.precision = precision if backend == "torch" and runner is None else "fp32"
        if runner is not None:
            self._run = runner
        elif backend == "torch":
            self._model = package.build_model().to(self.device).eval()
            self._run = self._forward
        else:
            self._run = OnnxRunner(package, threads=onnx_threads, precision=onnx_precision, provider=onnx_provider,
                                   device=device)
        self.onnx_providers: list[str] = list(getattr(self._run, "providers", []))  # what onnxruntime runs on

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild_predictor, (self.package, {**self._options, "thresholds": self.thresholds})

    def on(self, device: str, precision: str | None = None) -> Predictor:
        """This predictor with its network on ``device`` (and ``precision``, when given); itself when it is there."""
        if str(device) == self._options["device"] and precision in (None, self._options["precision"]):
            return self
        options = {**self._options, "thresholds": self.thresholds, "device": str(device)}
        if precision is not None:
            options["precision"] = precision
        return Predictor(self.package, **options)

    def _forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        on_cuda = self.device.startswith("cuda")
        if on_cuda:
            batch = batch.pin_memory()
        with autocast(self.device, self.precision):
            return tuple(self._model(batch.to(self.device, non_blocking=on_cuda)))

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, **kwargs: Any) -> Predictor:
        return cls(ModelPackage.load(folder), **kwargs)

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """``(3, S, S)`` float tensor of an RGB uint8 image through the package's evaluation transform (the
        one validation used in training: resize with the backbone's interpolation, its mean/std)."""
        return to_tensor(self.transform, image)

    def _normalise(self, tile: np.ndarray) -> torch.Tensor:
        """A tile already at the input size: the same transform (its resize leaves the size as it is)."""
        return to_tensor(self.transform, tile)

    def probabilities(self, images: Sequence[np.ndarray]) -> list[RawOutput]:
        """Class and pixel probabilities of a batch, the pixel ones at each image's own size."""
        return list(self.iter_probabilities(images))

    @torch.no_grad()
    def iter_probabilities(self, images: Sequence[np.ndarray]) -> Iterator[RawOutput]:
        if self.input_mode == "tile":  # one image at a time: its tiles are the batch
            for image in images:
                yield self._tiled(as_rgb_uint8(image))
        elif len(images) > 0:
            yield from self._resized([as_rgb_uint8(image) for image in images])

    def _tiled(self, image: np.ndarray) -> RawOutput:
        """One image by sliding window: batches of tiles in, blended full-size probabilities out.

        A model trained on crops of rescaled images (``input_scale`` != 1) sees the image rescaled
        the same way; its stitched probabilities are resized back to the image's own size.
        """
        if self.input_scale != 1.0:
            height, width = image.shape[:2]
            scaled = cv2.resize(image, (max(1, round(width * self.input_scale)), max(1, round(height * self.input_scale))),
                                interpolation=cv2.INTER_AREA if self.input_scale < 1 else cv2.INTER_LINEAR)
            raw = self._tiled_at_native(scaled)
            probs = cv2.resize(np.ascontiguousarray(raw.seg_probs), (width, height), interpolation=cv2.INTER_LINEAR)
            return RawOutput(raw.class_probs, probs.reshape(height, width, -1))
        return self._tiled_at_native(image)

    def _tiled_at_native(self, image: np.ndarray) -> RawOutput:
        size = self.image_size
        grid = TileGrid.cover(image.shape[0], image.shape[1], size, self.tile_overlap)
        padded = pad_to_tile(image, size)
        stitcher = Stitcher(grid)
        class_rows, scores = [], []
        for origins in grid.batches(self.tile_batch_size):
            batch = torch.stack([self._normalise(padded[y:y + size, x:x + size]) for y, x in origins])
            seg, cls = (t.numpy() for t in self._views(batch))
            stitcher.add(seg, origins)
            class_rows.append(cls)
            scores.append(tile_defect_scores(cls, seg, has_good=self.labels.has_good))
        class_probs = image_class_probs(np.concatenate(class_rows), np.concatenate(scores))
        return RawOutput(class_probs, stitcher.result())

    def _resized(self, rgb: list[np.ndarray]) -> list[RawOutput]:
        batch = torch.stack([self.preprocess(image) for image in rgb])
        seg_probs, class_probs = (t.numpy() for t in self._views(batch))
        out = []
        for i, image in enumerate(rgb):
            height, width = image.shape[:2]
            probs = cv2.resize(np.ascontiguousarray(seg_probs[i].transpose(1, 2, 0)), (width, height),
                               interpolation=cv2.INTER_LINEAR)
            out.append(RawOutput(class_probs[i], probs.reshape(height, width, -1)))
        return out

    def input_size_probabilities(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pixel (N, C, S, S), class (N, K)) probabilities of an already preprocessed batch at the model's input
        size, averaged over the plain view and the test-time flips (no resizing back, no thresholds)."""
        return self._views(batch)

    def _views(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pixel, class) probabilities of a batch averaged over the plain view and the test-time flips."""
        seg_sum, cls_sum = self._probs(batch)
        for flip in self.tta:
            dims = TTA_FLIPS[flip]
            seg, cls = self._probs(torch.flip(batch, dims))
            seg_sum, cls_sum = seg_sum + torch.flip(seg, dims), cls_sum + cls
        views = 1 + len(self.tta)
        return seg_sum / views, cls_sum / views

    def _probs(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pixel probabilities (N, C, S, S), class probabilities (N, K)) on the CPU, at the input size."""
        seg, cls = self._run(batch)
        seg_probs = torch.sigmoid(seg.float()) if self._binary else torch.softmax(seg.float(), dim=1)
        return seg_probs.cpu(), torch.softmax(cls.float(), dim=1).cpu()


def _rebuild_predictor(package: ModelPackage, options: dict[str, Any]) -> Predictor:
    return Predictor(package, **options)


def check_same_classes(members: Sequence[tuple[LabelSpace, str]], names: Sequence[str]) -> None:
    """Refuse ensemble members (label space, seg mode) that do not predict the same classes, naming both."""
    (first_labels, first_mode), first_name = members[0], names[0]
    for name, (labels, mode) in zip(names[1:], members[1:]):
        if labels != first_labels or mode != first_mode:
            raise ValueError(
                f"ensemble members must predict the same classes: {first_name} has "
                f"{list(first_labels.image_classes)} ({first_mode}), {name} has "
                f"{list(labels.image_classes)} ({mode}); combine models trained on the same data")


class EnsemblePredictor(_Decisions):
    """The weighted mean of several predictors' probabilities (backbones and input sizes may differ).

    Every member must predict the same classes in the same segmentation mode; the class and pixel
    probabilities are averaged per image at the image's own size, then thresholded once with the
    ensemble's own ``thresholds`` (tune them on the ensemble's validation output).
    """

    def __init__(self, members: Sequence[Predictor], *, weights: Sequence[float] | None = None,
                 thresholds: Thresholds | None = None, names: Sequence[str] | None = None):
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least two members, got {len(members)}")
        names = list(names or [f"member {i + 1}" for i in range(len(members))])
        check_same_classes([(m.labels, m.seg_mode) for m in members], names)
        first = members[0]
        weights = [1.0] * len(members) if weights is None else [float(w) for w in weights]
        if len(weights) != len(members) or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"ensemble weights must be one non-negative number per member with a positive sum, got "
                             f"{weights} for {len(members)} members")
        self.members = list(members)
        self.names = names
        self.weights = [w / sum(weights) for w in weights]
        self.labels = first.labels
        self.seg_mode = first.seg_mode
        self.thresholds = thresholds or Thresholds()

    def on(self, device: str, precision: str | None = None) -> EnsemblePredictor:
        """This ensemble with every member on ``device`` (and ``precision``, when given)."""
        return EnsemblePredictor([m.on(device, precision) for m in self.members], weights=self.weights,
                                 thresholds=self.thresholds, names=self.names)

    @property
    def device(self) -> str:
        return self.members[0].device

    def probabilities(self, images: Sequence[np.ndarray]) -> list[RawOutput]:
        return list(self.iter_probabilities(images))

    def iter_probabilities(self, images: Sequence[np.ndarray]) -> Iterator[RawOutput]:
        """Batched like the members; with a tiling member, image by image (one image's maps at a time)."""
        groups = [[image] for image in images] if any(m.input_mode == "tile" for m in self.members) else [images]
        for group in groups:
            if len(group) == 0:
                continue
            outputs = [member.probabilities(group) for member in self.members]
            for per_image in zip(*outputs):
                yield RawOutput(sum(w * raw.class_probs for w, raw in zip(self.weights, per_image)),
                                sum(w * raw.seg_probs for w, raw in zip(self.weights, per_image)))
