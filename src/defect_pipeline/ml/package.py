"""The model package format: a trained model as a self-contained folder anyone can load.

A :class:`ModelPackage` is a folder that loads without our training code's state:

* ``weights.safetensors`` — the model's tensors (safetensors: loading never runs code);
* ``model.json`` — what rebuilds the network (backbone, decoder, decoder width, segmentation
  mode, input size), how images reach it (``input_mode``: absent or ``resize``, the whole image
  resized to ``image_size``; ``tile``, sliding ``image_size`` tiles at the image's own scale;
  ``mean``/``std``/``interpolation`` from the backbone's timm data config and ``eval_transform``,
  the training-time evaluation transform as ``albumentations.to_dict``, see
  :mod:`defect_pipeline.ml.preprocess`; older packages lack it), the label space and where the weights came from (stage, epoch, monitored
  metric, data-manifest hash);
* ``thresholds.json`` — the operating point used at prediction time
  (see :class:`~defect_pipeline.ml.postprocess.Thresholds`);
* optionally ``model.onnx`` (+ ``model.onnx.json`` naming the weights it was exported from),
  written by the ``export`` pipeline.

:class:`ModelStore` names where a package lives without reading it (what the Kedro dataset
hands to nodes). Prediction itself is in :mod:`defect_pipeline.ml.predict`.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from defect_pipeline.ml.augment import IMAGENET_MEAN, IMAGENET_STD
from defect_pipeline.ml.labels import LabelSpace
from defect_pipeline.ml.models import MultitaskNet, create_model
from defect_pipeline.ml.models.adapters import LoraSpec, add_lora, merge_lora
from defect_pipeline.ml.postprocess import Thresholds

PACKAGE_FORMAT = 1
WEIGHTS_FILE = "weights.safetensors"
MODEL_FILE = "model.json"
THRESHOLDS_FILE = "thresholds.json"
ONNX_FILE = "model.onnx"
ONNX_META_FILE = "model.onnx.json"
INPUT_MODES = ("resize", "tile")  # model meta "input_mode"; absent = resize (packages written before tiling)


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

    @property
    def input_mode(self) -> str:
        """``resize`` (also when the meta has no ``input_mode``) or ``tile``; anything else is refused."""
        mode = self.meta.get("input_mode") or "resize"
        if mode not in INPUT_MODES:
            where = self.folder / MODEL_FILE if self.folder is not None else "the model meta"
            raise ValueError(f"{where} has input_mode {mode!r}; use one of {list(INPUT_MODES)} (or leave it out "
                             "for resize)")
        return mode

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
            # checkpoints written before the backbone's own normalisation was recorded: ImageNet's
            "mean": list(state["model_meta"].get("mean", IMAGENET_MEAN)),
            "std": list(state["model_meta"].get("std", IMAGENET_STD)),
            "stage": state.get("stage"),
            "epoch": state.get("epoch"),
            "global_step": state.get("global_step"),
            "monitor": state.get("monitor"),
            "best_metric": state.get("best_metric"),
            "manifest_hash": state.get("manifest_hash"),
            "source_checkpoint": source,
        }
        weights = {k: v.detach().cpu().contiguous() for k, v in state["model"].items()}
        package = cls(weights, meta, thresholds or Thresholds())
        if meta.get("adapter"):  # LoRA: the package holds the merged weights, it runs without adapter code
            net = package.new_network()
            add_lora(net, LoraSpec.from_dict(meta["adapter"]))
            net.load_state_dict(state["model"])
            merged = merge_lora(net).state_dict()
            package = cls({k: v.detach().cpu().contiguous() for k, v in merged.items()},
                          {**meta, "adapter": {**meta["adapter"], "merged": True}}, package.thresholds)
        return package

    def new_network(self) -> MultitaskNet:
        """The network this package describes, with fresh weights (no adapters)."""
        labels = self.labels
        with warnings.catch_warnings():  # the weights are loaded next: random init is not a concern
            warnings.filterwarnings("ignore", message=".*random initialisation")
            return create_model(self.meta["backbone"], num_image_classes=labels.num_image_classes,
                                num_seg_classes=labels.num_seg_classes, seg_mode=self.meta["seg_mode"],
                                decoder=self.meta["decoder"], decoder_channels=int(self.meta["decoder_channels"]),
                                image_size=int(self.meta["image_size"]), pretrained=False)

    def build_model(self) -> MultitaskNet:
        """The network with these weights, in eval mode on the CPU."""
        net = self.new_network()
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

    def written_ns(self) -> int | None:
        """When the package was last written (``model.json``'s modification time, ns); None when there is none."""
        return (Path(self.path) / MODEL_FILE).stat().st_mtime_ns if self.exists() else None

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
