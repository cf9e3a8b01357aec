"""A lazy PyTorch dataset over the manifest, and seeded data loaders.

:class:`ManifestDataset` keeps only the manifest rows it serves (paths, labels, mask facts: a
few hundred bytes per sample) and reads one image and its mask per ``__getitem__`` through
:func:`~defect_pipeline.data.imageio.load_image` / :func:`~defect_pipeline.data.imageio.load_mask`,
the same decoding the data checks used. Masks become segmentation targets over
``LabelSpace.seg_classes`` (0 = background, ``1 + i`` = defect class ``i``):

* ``seg_mode="multiclass"``: a ``binary`` mask ({0, 1}) is multiplied by the image's
  ``labels.seg_index(label)`` (so a defect-free image gives all zeros); a ``class_index`` mask
  (mmseg) already holds ``0..K`` and is used as it is;
* ``seg_mode="binary"``: any mask becomes ``mask > 0`` (defect vs background).

With a ``crop`` (:class:`~defect_pipeline.ml.crops.CropSampler`, input mode ``crop``) each item is
a crop of the image, taken before the transform, and its image class follows the crop
(:func:`~defect_pipeline.ml.crops.crop_target`: a crop without defect pixels is defect-free).

:func:`create_dataloader` makes runs repeatable: a seeded ``torch.Generator`` drives shuffling
and the workers' base seed, and :func:`seed_worker` seeds ``random``, ``numpy`` and the
worker's copy of the albumentations transform from the worker's torch seed (see
:mod:`defect_pipeline.ml.augment` for why the transform needs it).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler, Subset

from defect_pipeline.data.imageio import ImageDecodeError, load_image, load_mask
from defect_pipeline.ml.crops import CropSampler, crop_target
from defect_pipeline.ml.labels import LabelSpace

__all__ = [
    "SEG_MODES",
    "SampleReadError",
    "ManifestDataset",
    "labels_from_manifest",
    "create_dataloader",
    "seed_worker",
    "reseed_augmentations",
    "class_counts",
]

SEG_MODES = ("multiclass", "binary")
REQUIRED_COLUMNS = ("image_path", "label", "split", "status")


class SampleReadError(RuntimeError):
    """An accepted sample whose image or mask cannot be read (or does not fit) at training time."""


def _text(value: Any) -> str | None:
    """A manifest cell as ``str``, or ``None`` for NA/None/empty."""
    if value is None:
        return None
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    text = str(value)
    return text or None


def _int(value: Any, default: int) -> int:
    try:
        return default if pd.isna(value) else int(value)
    except (TypeError, ValueError):
        return default


def _accepted(manifest: pd.DataFrame) -> pd.Series:
    return manifest["status"].astype("object").eq("accepted")


class ManifestDataset(Dataset):
    """The accepted samples of one split of a manifest, read lazily from ``root``.

    Each item is ``{"image": FloatTensor[3, H, W], "mask": LongTensor[H, W],
    "label": LongTensor[] (index into labels.image_classes), "index": int}`` where ``index`` is
    the position in this dataset (``dataset.sample_ids[index]`` names the sample). ``transform``
    is called as ``transform(image=uint8 (H, W, 3), mask=uint8 (H, W))`` and must return a dict
    with ``image`` and ``mask`` (e.g. :func:`defect_pipeline.ml.augment.build_transform`); with
    ``transform=None`` the image is only scaled to ``[0, 1]``. ``crop`` (optional) cuts the read
    image and mask to a training crop first (``crop(image, mask, index=index)``); the item's
    ``label`` is then the crop's class. Samples keep the manifest's row order.

    Attributes (plain lists, index-aligned, for reports and samplers): ``sample_ids``,
    ``image_paths`` (relative to ``root``), ``mask_paths`` (``None`` where there is no mask),
    ``sample_labels`` (label names), ``targets`` (image class indices).
    """

    def __init__(
        self,
        manifest: pd.DataFrame,
        *,
        root: str | Path,
        split: str | None,
        labels: LabelSpace,
        transform: Callable[..., dict[str, Any]] | None,
        seg_mode: str = "multiclass",
        binarize_threshold: int = 127,
        crop: CropSampler | None = None,
    ):
        missing = [c for c in REQUIRED_COLUMNS if c not in manifest.columns]
        if missing:
            raise ValueError(f"manifest lacks the column(s) {missing}; is it the data pipeline's manifest?")
        if seg_mode not in SEG_MODES:
            raise ValueError(f"seg_mode must be one of {SEG_MODES}, got {seg_mode!r}")
        self.root = Path(root)
        self.split = split
        self.labels = labels
        self.transform = transform
        self.crop = crop
        self.seg_mode = seg_mode
        self.binarize_threshold = int(binarize_threshold)

        keep = _accepted(manifest)
        if split is not None:
            keep &= manifest["split"].astype("object").eq(split)
        rows = manifest.loc[keep.to_numpy(dtype=bool)]

        def column(name: str) -> list[Any]:
            return list(rows[name]) if name in rows.columns else [None] * len(rows)

        self.image_paths: list[str] = []
        self.mask_paths: list[str | None] = []
        self.sample_labels: list[str] = []
        self.sample_ids: list[str] = []
        self.targets: list[int] = []
        self._seg_values: list[int] = []
        self._mask_types: list[str] = []
        self._orientations: list[int] = []
        self._mask_transforms: list[str] = []
        sample_ids = column("sample_id")
        for i, (image_path, mask_path, label, mask_type, orientation, mask_transform) in enumerate(zip(
            column("image_path"), column("mask_path"), column("label"), column("mask_type"),
            column("exif_orientation"), column("mask_transform"),
        )):
            image_path = _text(image_path)
            label = _text(label)
            if image_path is None or label is None:
                raise ValueError(f"accepted manifest row {rows.index[i]!r} has no image_path or label")
            mask_type = _text(mask_type) or "binary"
            if mask_type not in ("binary", "class_index"):
                raise ValueError(f"{image_path}: unknown mask_type {mask_type!r} (expected 'binary' or 'class_index')")
            try:
                target = labels.image_index(label)
                seg_value = labels.seg_index(label)
            except (KeyError, ValueError):
                raise ValueError(
                    f"{image_path}: label {label!r} is not in the label space {list(labels.image_classes)}"
                ) from None
            self.image_paths.append(image_path)
            self.mask_paths.append(_text(mask_path))
            self.sample_labels.append(label)
            self.sample_ids.append(_text(sample_ids[i]) or image_path)
            self.targets.append(target)
            self._seg_values.append(seg_value)
            self._mask_types.append(mask_type)
            self._orientations.append(_int(orientation, 1))
            self._mask_transforms.append(_text(mask_transform) or "none")

    def __len__(self) -> int:
        return len(self.image_paths)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(split={self.split!r}, samples={len(self)}, root={str(self.root)!r}, "
                f"seg_mode={self.seg_mode!r}" + (f", crop={self.crop!r})" if self.crop is not None else ")"))

    def read_sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The untransformed ``(image (H, W, 3) uint8, mask (H, W) uint8 target)`` of one sample.

        The mask is already mapped to this dataset's ``seg_mode`` (class indices for multiclass,
        {0, 1} for binary). Raises :class:`SampleReadError` naming the file when a read fails.
        """
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        index = index % len(self)
        image_file = self.root / self.image_paths[index]
        mask_rel = self.mask_paths[index]
        mask_file = self.root / mask_rel if mask_rel is not None else None
        hint = "the data pipeline should have quarantined it; re-run `kedro run --pipeline=data`"
        try:
            image = load_image(image_file)
        except (ImageDecodeError, OSError) as error:
            raise SampleReadError(
                f"cannot read image {image_file} (sample {self.sample_ids[index]}): {error}; {hint}"
            ) from error
        try:
            mask = load_mask(
                mask_file,
                mask_type=self._mask_types[index],
                shape=image.shape[:2],
                binarize_threshold=self.binarize_threshold,
                orientation=self._orientations[index],
                mask_transform=self._mask_transforms[index],
            )
        except (ImageDecodeError, OSError) as error:
            raise SampleReadError(
                f"cannot read mask {mask_file} of image {image_file} (sample {self.sample_ids[index]}): "
                f"{error}; {hint}"
            ) from error
        if mask.shape != image.shape[:2]:
            raise SampleReadError(
                f"mask {mask_file} is {mask.shape[1]}x{mask.shape[0]} but image {image_file} is "
                f"{image.shape[1]}x{image.shape[0]} (width x height); {hint}"
            )
        return image, self._map_mask(mask, index, mask_file)

    def load_raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Alias of :meth:`read_sample` (untransformed image and mapped mask, e.g. for previews)."""
        return self.read_sample(index)

    def _map_mask(self, mask: np.ndarray, index: int, mask_file: Path | None) -> np.ndarray:
        if self.seg_mode == "binary":
            return (mask > 0).astype(np.uint8)
        if self._mask_types[index] == "binary":
            return (mask > 0).astype(np.uint8) * np.uint8(self._seg_values[index])
        top = int(mask.max(initial=0))
        if top >= self.labels.num_seg_classes:
            raise SampleReadError(
                f"class-index mask {mask_file} holds index {top}, but there are only "
                f"{self.labels.num_seg_classes} segmentation classes {list(self.labels.seg_classes)}"
            )
        return mask

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, mask = self.read_sample(index)
        index = index % len(self)
        if self.crop is not None:
            image, mask = self.crop(image, mask, index=index)
        if self.transform is not None:
            out = self.transform(image=image, mask=mask)
            image_out, mask_out = out["image"], out["mask"]
        else:
            image_out, mask_out = image, mask
        mask_tensor = torch.as_tensor(np.asarray(mask_out) if not torch.is_tensor(mask_out) else mask_out).long()
        target = self.targets[index]
        if self.crop is not None:
            target = crop_target(mask_tensor.numpy(), image_target=target, labels=self.labels, seg_mode=self.seg_mode,
                                 has_mask=self.mask_paths[index] is not None)
        return {"image": _image_tensor(image_out), "mask": mask_tensor,
                "label": torch.tensor(target, dtype=torch.long), "index": int(index)}


def _image_tensor(image: Any) -> torch.Tensor:
    """A transform's image as float ``(3, H, W)``; uint8 HWC arrays are scaled to ``[0, 1]``."""
    if torch.is_tensor(image):
        return image.float()
    array = np.asarray(image)
    tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1) if array.ndim == 3 else array[None]))
    return tensor.float().div_(255.0) if array.dtype == np.uint8 else tensor.float()


def labels_from_manifest(manifest: pd.DataFrame, *, defect_classes: Sequence[str], good_label: str) -> LabelSpace:
    """The label space of a manifest: ``has_good`` when any accepted row is labelled ``good_label``.

    Raises ``ValueError`` when an accepted row's label is neither ``good_label`` nor one of
    ``defect_classes`` (the model could not be given that target).
    """
    defect_classes = tuple(str(c) for c in defect_classes)
    if good_label in defect_classes:
        raise ValueError(f"good_label {good_label!r} is also listed as a defect class {list(defect_classes)}")
    if len(set(defect_classes)) != len(defect_classes):
        raise ValueError(f"defect_classes has duplicates: {list(defect_classes)}")
    accepted_labels = set(manifest.loc[_accepted(manifest).to_numpy(dtype=bool), "label"].dropna().astype(str))
    unknown = sorted(accepted_labels - set(defect_classes) - {good_label})
    if unknown:
        raise ValueError(
            f"accepted samples have label(s) {unknown} that are neither the good label {good_label!r} nor "
            f"one of the defect classes {list(defect_classes)}"
        )
    return LabelSpace(defect_classes, good_label=good_label, has_good=good_label in accepted_labels)


# --- loaders ---------------------------------------------------------------------------------


def _transforms_of(dataset: Any) -> Iterator[Any]:
    """The ``transform`` and ``crop`` objects of a dataset, looking through Subset/ConcatDataset wrappers."""
    if isinstance(dataset, Subset):
        yield from _transforms_of(dataset.dataset)
    elif isinstance(dataset, ConcatDataset):
        for part in dataset.datasets:
            yield from _transforms_of(part)
    else:
        for name in ("transform", "crop"):
            random_part = getattr(dataset, name, None)
            if random_part is not None:
                yield random_part


def reseed_augmentations(dataset: Any, seed: int) -> None:
    """Reseed a dataset's random transform and crop sampler (through Subset/ConcatDataset wrappers)."""
    for transform in _transforms_of(dataset):
        set_seed = getattr(transform, "set_random_seed", None)
        if callable(set_seed):
            set_seed(seed)


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: seed ``random``, ``numpy`` and the worker's transform copy.

    The worker's torch seed is ``base_seed + worker_id``, with ``base_seed`` drawn from the
    loader's generator when the loader starts its workers, so it is distinct per worker and
    repeatable for a seeded generator. Albumentations' ``Compose`` ignores global seeds, hence
    the explicit ``set_random_seed`` on the worker's copy of the dataset's transform.
    """
    info = torch.utils.data.get_worker_info()
    seed = (info.seed if info is not None else torch.initial_seed()) % 2**32
    random.seed(seed)
    np.random.seed(seed)
    if info is not None:
        reseed_augmentations(info.dataset, seed)


def create_dataloader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    num_workers: int,
    seed: int | None,
    drop_last: bool = False,
    pin_memory: bool | None = None,
    sampler: Sampler | None = None,
) -> DataLoader:
    """A ``DataLoader`` whose order and augmentations repeat for the same ``seed`` and ``num_workers``.

    * a ``torch.Generator`` seeded with ``seed`` drives the shuffle and the workers' base seed
      (``seed=None``: a random one, not repeatable);
    * ``num_workers > 0``: :func:`seed_worker` reseeds each worker (``random``, ``numpy``, the
      albumentations transform) from the generator; workers are restarted each epoch (not
      persistent), so re-seeding the generator at an epoch start (the training engine does,
      with ``seed + epoch``) makes that epoch's augmentations repeat — which is what makes a
      resumed run equal an uninterrupted one;
    * ``num_workers == 0``: the dataset's transform is reseeded with ``seed`` here (this mutates
      ``dataset.transform``'s random state), so a fresh loader with the same seed repeats;
    * ``pin_memory`` defaults to ``torch.cuda.is_available()``;
    * ``sampler`` (several training processes: a shard per rank) replaces ``shuffle``.

    The same seed gives the same batches for a given ``num_workers``; different worker counts
    split the random streams differently, so their augmentations differ.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    if shuffle and len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError("cannot shuffle an empty dataset: no accepted samples in this split")
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(int(seed))
        if num_workers == 0:
            reseed_augmentations(dataset, int(seed) % 2**32)
    return DataLoader(
        dataset,
        batch_size=int(batch_size),
        shuffle=bool(shuffle) if sampler is None else None,
        sampler=sampler,
        num_workers=int(num_workers),
        generator=generator,
        worker_init_fn=seed_worker if num_workers > 0 else None,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available() if pin_memory is None else bool(pin_memory),
        drop_last=bool(drop_last),
    )


def class_counts(dataset: Dataset) -> list[int]:
    """Samples per image class (``labels.image_classes`` order), from the manifest, reading no image.

    Works on a :class:`ManifestDataset` or a ``Subset`` of one.
    """
    if isinstance(dataset, Subset):
        base = dataset.dataset
        targets = [base.targets[i] for i in dataset.indices]  # type: ignore[attr-defined]
    else:
        base = dataset
        targets = list(getattr(dataset, "targets"))
    labels: LabelSpace = getattr(base, "labels")
    counts = np.bincount(np.asarray(targets, dtype=np.int64), minlength=labels.num_image_classes)
    return [int(c) for c in counts[: labels.num_image_classes]]
