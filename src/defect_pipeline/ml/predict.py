"""A trained model as a self-contained package, and prediction with explicit thresholds.

A :class:`ModelPackage` is a folder anyone can load without our training code's state:

* ``weights.safetensors`` — the model's tensors (safetensors: loading never runs code);
* ``model.json`` — what rebuilds the network (backbone, decoder, decoder width, segmentation
  mode, input size, normalisation), the label space and where the weights came from (stage,
  epoch, monitored metric, data-manifest hash);
* ``thresholds.json`` — the operating point used at prediction time (see :class:`Thresholds`);
* optionally ``model.onnx`` (+ ``model.onnx.json`` naming the weights it was exported from),
  written by the ``export`` pipeline.

:class:`Predictor` turns images of any size and mode into labels, class scores and masks at the
image's own size, applying the thresholds. It is the one prediction path: the MLflow pyfunc
model and the batch-inference pipeline both go through it.
"""

from __future__ import annotations

import hashlib
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
ONNX_FILE = "model.onnx"
ONNX_META_FILE = "model.onnx.json"


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
        per_class: one threshold per defect class (empty: all equal). Among the defect classes
            the label is the one with the largest ``p(class) / threshold(class)``; with equal
            thresholds that is the plain argmax.
        source: where the values come from (``default`` or a tuning run), recorded with every
            prediction.
    """

    image: float = 0.5
    pixel: float = 0.5
    min_area: int = 0
    per_class: dict[str, float] = field(default_factory=dict)
    source: str = "default: 0.5 / 0.5 / 0 px (not tuned)"

    def __post_init__(self) -> None:
        for name in ("image", "pixel"):
            value = getattr(self, name)
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"thresholds.{name} must be within [0, 1], got {value}")
        if int(self.min_area) < 0:
            raise ValueError(f"thresholds.min_area must be >= 0, got {self.min_area}")
        for name, value in self.per_class.items():
            if not 0.0 < float(value) <= 1.0:
                raise ValueError(f"thresholds.per_class.{name} must be within (0, 1], got {value}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Thresholds:
        known = {k: data[k] for k in ("image", "pixel", "min_area", "per_class", "source") if k in data}
        return cls(**known)

    def replace(self, **changes: Any) -> Thresholds:
        return Thresholds.from_dict({**self.to_dict(), **changes})


@dataclass
class ModelPackage:
    """Weights, the description that rebuilds the network, and the thresholds."""

    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any]
    thresholds: Thresholds = field(default_factory=Thresholds)
    folder: Path | None = None  # where it was loaded from / saved to

    @property
    def weights_sha256(self) -> str:
        """Hash of the weights (names, dtypes, shapes, values): identifies this exact model."""
        digest = hashlib.sha256()
        for name in sorted(self.state_dict):
            tensor = self.state_dict[name].detach().cpu().contiguous()
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
        return digest.hexdigest()

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
        self.meta["weights_sha256"] = self.weights_sha256
        tmp = folder / f".{WEIGHTS_FILE}.tmp"
        save_file(self.state_dict, str(tmp), metadata={"format": str(PACKAGE_FORMAT)})
        os.replace(tmp, folder / WEIGHTS_FILE)
        _write_json(folder / MODEL_FILE, self.meta)
        _write_json(folder / THRESHOLDS_FILE, self.thresholds.to_dict())
        self.folder = folder
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
        return cls(load_file(str(folder / WEIGHTS_FILE), device="cpu"), meta, thresholds, folder)

    @classmethod
    def from_path(cls, path: str | os.PathLike) -> ModelPackage:
        """A package folder, or a training checkpoint file (``best.pt``/``last.pt``, default thresholds)."""
        path = Path(path)
        if path.is_dir():
            return cls.load(path)
        from defect_pipeline.ml.checkpoint import CheckpointError, safe_torch_load

        state = safe_torch_load(path)
        if not isinstance(state, dict) or "model" not in state or "model_meta" not in state:
            raise CheckpointError(f"{path} is not a training checkpoint of this project (no model_meta); pass a "
                                  "model package folder (data/06_models/<stage>/model) or a best.pt / last.pt")
        return cls.from_checkpoint(state, source=str(path))


@dataclass(frozen=True)
class ModelStore:
    """Where a package lives, without reading it (what the Kedro dataset hands to nodes).

    ``hint`` tells the user how to produce the package when it is missing.
    """

    path: str
    hint: str = ""

    def exists(self) -> bool:
        return (Path(self.path) / MODEL_FILE).is_file() and (Path(self.path) / WEIGHTS_FILE).is_file()

    def meta(self) -> dict[str, Any]:
        """``model.json`` (cheap: no weights read); ``{}`` when missing."""
        file = Path(self.path) / MODEL_FILE
        return json.loads(file.read_text()) if file.is_file() else {}

    def load(self) -> ModelPackage:
        if not self.exists():
            raise FileNotFoundError(f"no model package at {self.path}" + (f": {self.hint}" if self.hint else ""))
        return ModelPackage.load(self.path)


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


@dataclass
class RawOutput:
    """The model's probabilities for one image, before any threshold."""

    class_probs: np.ndarray  # (num_image_classes,)
    seg_probs: np.ndarray  # (H, W, C) at the image's own size (C = 1 in binary mode)

    @property
    def defect_pixel_probs(self) -> np.ndarray:
        """``(H, W)`` probability that a pixel is a defect (any class)."""
        return self.seg_probs[:, :, 0] if self.seg_probs.shape[2] == 1 else 1.0 - self.seg_probs[:, :, 0]


def decide(raw: RawOutput, labels: LabelSpace, thresholds: Thresholds) -> Prediction:
    """Label, scores and mask of one image at an operating point (see :class:`Thresholds`)."""
    names = labels.image_classes
    scores = {name: float(p) for name, p in zip(names, raw.class_probs, strict=True)}
    defect_probs = raw.class_probs[1:] if labels.has_good else raw.class_probs
    if thresholds.per_class:
        scale = np.asarray([thresholds.per_class.get(c, 1.0) for c in labels.defect_classes], dtype=np.float64)
        best_defect = labels.defect_classes[int(np.argmax(defect_probs / scale))]
    else:
        best_defect = labels.defect_classes[int(np.argmax(defect_probs))]
    if labels.has_good:
        defect_score = 1.0 - scores[labels.good_label]
        label = best_defect if defect_score >= thresholds.image else labels.good_label
    else:
        defect_score, label = 1.0, best_defect
    probs = raw.seg_probs
    if probs.shape[2] == 1:
        mask = (probs[:, :, 0] >= thresholds.pixel).astype(np.uint8)
    else:
        is_defect = (1.0 - probs[:, :, 0]) >= thresholds.pixel
        mask = np.where(is_defect, 1 + np.argmax(probs[:, :, 1:], axis=2), 0).astype(np.uint8)
    mask = remove_small_regions(mask, int(thresholds.min_area))
    return Prediction(label, scores, float(defect_score), mask, int((mask > 0).sum()))


class _OnnxRunner:
    """The package's ``model.onnx`` through onnxruntime (CPU), outputs like the PyTorch model's."""

    def __init__(self, package: ModelPackage, threads: int | None = None):
        if package.folder is None or not (package.folder / ONNX_FILE).is_file():
            where = package.folder or "the model package"
            raise FileNotFoundError(f"{where} has no {ONNX_FILE}; run `kedro run --pipeline=export` first, or use "
                                    "inference.backend: torch")
        sidecar = package.folder / ONNX_META_FILE
        exported_from = json.loads(sidecar.read_text()).get("weights_sha256") if sidecar.is_file() else None
        if exported_from != package.weights_sha256:
            raise ValueError(f"{package.folder / ONNX_FILE} was exported from other weights than this package's "
                             "(stale export); run `kedro run --pipeline=export` again")
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 0  # 0: onnxruntime's default (one thread per physical core)
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(package.folder / ONNX_FILE), options,
                                            providers=["CPUExecutionProvider"])

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seg, cls = self.session.run(["seg_logits", "cls_logits"], {"image": batch.cpu().numpy()})
        return torch.from_numpy(seg), torch.from_numpy(cls)


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

    def decide(self, raw: RawOutput, thresholds: Thresholds | None = None) -> Prediction:
        return decide(raw, self.labels, thresholds or self.thresholds)

    def predict(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        """Predictions for a batch of images (any size, grayscale/RGB/RGBA, uint8/uint16/float)."""
        return [self.decide(raw) for raw in self.probabilities(images)]


class Predictor(_Decisions):
    """Batched prediction of a :class:`ModelPackage` on images of any size.

    Each image is resized to the model's input size (bilinear), normalised as in training, and
    the segmentation probabilities are resized back to the image's size before thresholding.
    ``backend="onnx"`` runs the package's exported ``model.onnx`` with onnxruntime instead of
    PyTorch (same preprocessing and decisions), with ``onnx_threads`` intra-op threads (None:
    onnxruntime's default, one per physical core).

    ``tta``: test-time flips (``hflip``, ``vflip``). Each flipped batch is predicted, its
    probabilities flipped back, and all views (the plain one included) averaged, in mask space
    at the model's input size, before resizing to the image — 1 + len(tta) forward passes.
    """

    def __init__(self, package: ModelPackage, *, thresholds: Thresholds | None = None, device: str = "cpu",
                 backend: str = "torch", onnx_threads: int | None = None, tta: Sequence[str] = ()):
        if backend not in ("torch", "onnx"):
            raise ValueError(f"backend must be 'torch' or 'onnx', got {backend!r}")
        self.package = package
        self.labels = package.labels
        self.thresholds = thresholds or package.thresholds
        self.device = device if backend == "torch" else "cpu"
        self.backend = backend
        self.image_size = int(package.meta["image_size"])
        self.seg_mode = package.meta["seg_mode"]
        self.tta = check_tta(tta)
        self._binary = self.seg_mode == "binary"
        self._mean = np.asarray(package.meta.get("mean", IMAGENET_MEAN), dtype=np.float32) * 255.0
        self._std = np.asarray(package.meta.get("std", IMAGENET_STD), dtype=np.float32) * 255.0
        if backend == "torch":
            model = package.build_model().to(self.device)
            self._run = lambda batch: tuple(model(batch.to(self.device)))
        else:
            self._run = _OnnxRunner(package, threads=onnx_threads)

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, **kwargs: Any) -> Predictor:
        return cls(ModelPackage.load(folder), **kwargs)

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """``(3, S, S)`` float tensor of an RGB uint8 image, as the evaluation transform of training."""
        resized = cv2.resize(image, (self.image_size, self.image_size), interpolation=cv2.INTER_LINEAR)
        normalised = (resized.astype(np.float32) - self._mean) / self._std
        return torch.from_numpy(normalised.transpose(2, 0, 1).copy())

    @torch.no_grad()
    def probabilities(self, images: Sequence[np.ndarray]) -> list[RawOutput]:
        """Class and pixel probabilities of a batch, the pixel ones at each image's own size."""
        if len(images) == 0:
            return []
        rgb = [as_rgb_uint8(image) for image in images]
        batch = torch.stack([self.preprocess(image) for image in rgb])
        seg_sum, cls_sum = self._probs(batch)
        for flip in self.tta:
            dims = TTA_FLIPS[flip]
            seg, cls = self._probs(torch.flip(batch, dims))
            seg_sum, cls_sum = seg_sum + torch.flip(seg, dims), cls_sum + cls
        views = 1 + len(self.tta)
        class_probs, seg_probs = (cls_sum / views).numpy(), (seg_sum / views).numpy()
        out = []
        for i, image in enumerate(rgb):
            height, width = image.shape[:2]
            probs = cv2.resize(np.ascontiguousarray(seg_probs[i].transpose(1, 2, 0)), (width, height),
                               interpolation=cv2.INTER_LINEAR)
            out.append(RawOutput(class_probs[i], probs.reshape(height, width, -1)))
        return out

    def _probs(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pixel probabilities (N, C, S, S), class probabilities (N, K)) on the CPU, at the input size."""
        seg, cls = self._run(batch)
        seg_probs = torch.sigmoid(seg.float()) if self._binary else torch.softmax(seg.float(), dim=1)
        return seg_probs.cpu(), torch.softmax(cls.float(), dim=1).cpu()


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

    def probabilities(self, images: Sequence[np.ndarray]) -> list[RawOutput]:
        outputs = [member.probabilities(images) for member in self.members]
        return [RawOutput(sum(w * raw.class_probs for w, raw in zip(self.weights, per_image)),
                          sum(w * raw.seg_probs for w, raw in zip(self.weights, per_image)))
                for per_image in zip(*outputs)]
