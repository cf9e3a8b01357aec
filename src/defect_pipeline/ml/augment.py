"""Augmentation recipes: YAML lists of albumentations transforms, validated and built into a Compose.

A *recipe* is a list of ``{"name": "<albumentations class name>", **kwargs}`` dicts, e.g.::

    - {name: HorizontalFlip, p: 0.5}
    - {name: RandomBrightnessContrast, p: 0.3, brightness_limit: 0.2}
    - {name: OneOf, p: 0.5, transforms: [{name: GaussianBlur}, {name: GaussNoise}]}

:func:`validate_recipe` checks a recipe at start-up without any image (unknown names with close
suggestions, bad arguments, transforms that cannot move a mask with the image);
:func:`build_transform` turns it into an ``albumentations.Compose`` that always ends with a resize
to ``image_size x image_size`` (masks resized with nearest neighbour, so class indices survive),
``Normalize`` and ``ToTensorV2`` (``for_display=True``: uint8 output for
:func:`defect_pipeline.ml.preview.render_preview`, which draws the ``augmentation`` node's preview).

Randomness: ``Compose`` keeps its own random state and ignores ``np.random.seed``/``random.seed``.
``build_transform(seed=...)`` fixes that state for use in the main process. In a ``DataLoader``,
every worker receives a *copy* of the transform, so identical seeds would repeat the same
augmentations in every worker; :func:`defect_pipeline.ml.dataset.create_dataloader` therefore
reseeds each worker's copy (``transform.set_random_seed(worker_seed)``, where ``worker_seed`` is
the worker's torch seed: a base seed drawn from the loader's seeded ``torch.Generator`` plus the
worker id) and, with ``num_workers=0``, reseeds the transform with the loader's seed. The same
loader seed and ``num_workers`` therefore give the same augmented batches on every run.
"""

from __future__ import annotations

import copy
import difflib
import inspect
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import albumentations as A
import cv2
import numpy as np
from albumentations.core.transforms_interface import BasicTransform, ImageOnlyTransform
from albumentations.core.type_definitions import Targets
from albumentations.pytorch import ToTensorV2

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "COMPOSITIONS",
    "available_transforms",
    "validate_recipe",
    "build_transform",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Albumentations compositions a recipe may nest (``{"name": "OneOf", "transforms": [...]}``).
COMPOSITIONS: tuple[str, ...] = ("OneOf", "SomeOf", "Sequential", "RandomOrder")

#: Transforms build_transform adds (or that would break the normalisation it adds).
_RESERVED = {
    "Normalize": "build_transform appends Normalize itself (mean/std are its arguments)",
    "ToTensorV2": "build_transform appends ToTensorV2 itself",
    "ToFloat": "it changes the pixel scale that the final Normalize expects (uint8 0..255)",
    "FromFloat": "it changes the pixel scale that the final Normalize expects (uint8 0..255)",
}
_ABSTRACT = {"BasicTransform", "DualTransform", "ImageOnlyTransform", "Transform3D"}
_DATA_KEYS = {"image", "mask", "masks", "images"}  # what the dataset hands to a transform
_DRY_RUN_SIZE = 96


@lru_cache(maxsize=1)
def available_transforms() -> tuple[str, ...]:
    """Names of the albumentations transforms (and compositions) a recipe may use."""
    names = [
        name
        for name, obj in vars(A).items()
        if inspect.isclass(obj) and issubclass(obj, BasicTransform) and name not in _ABSTRACT
        and not inspect.isabstract(obj)
    ]
    return tuple(sorted(set(names) | set(COMPOSITIONS)))


def _suggest(name: str, choices: Sequence[str]) -> list[str]:
    lowered = {choice.lower(): choice for choice in choices}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.6)
    return [lowered[c] for c in close]


def _where(path: str, name: str) -> str:
    return f"augmentation recipe {path} ({name})" if name else f"augmentation recipe {path}"


def _as_targets(cls: type) -> set[Targets]:
    targets = getattr(cls, "_targets", ())
    return set(targets) if isinstance(targets, tuple) else {targets}


def _check_kwargs(cls: type, name: str, kwargs: Mapping[str, Any], where: str) -> None:
    parameters = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    valid = [p for p in parameters if p != "self"]
    for key in kwargs:
        if key not in parameters:
            hint = _suggest(key, valid) or [v for v in valid if key.lower().startswith(v.lower())
                                            or v.lower().startswith(key.lower())][:3]
            hint_text = f"; did you mean {', '.join(repr(h) for h in hint)}?" if hint else ""
            raise ValueError(
                f"{where}: {name} has no argument {key!r}{hint_text} (valid arguments: {', '.join(valid)})"
            )


def _validation_details(error: BaseException) -> str | None:
    """``argument <name>: <message> (got <value>)`` for a pydantic validation error, else None."""
    for candidate in (error, error.__cause__, error.__context__):
        errors = getattr(candidate, "errors", None)
        if not callable(errors):
            continue
        try:
            by_argument: dict[str, list[str]] = {}
            for item in errors():
                loc = item.get("loc") or ()
                argument = str(loc[0]) if loc else ""
                message = str(item.get("msg", "")).strip()
                if loc and item.get("type") != "missing":
                    message += f" (got {item.get('input')!r})"
                if message not in by_argument.setdefault(argument, []):
                    by_argument[argument].append(message)
        except Exception:  # noqa: BLE001 - fall back to the plain text
            return None
        return "; ".join(
            f"argument {arg!r}: {' / '.join(msgs)}" if arg else " / ".join(msgs) for arg, msgs in by_argument.items()
        )
    return None


def _instantiate(cls: type, name: str, kwargs: Mapping[str, Any], where: str) -> Any:
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as error:
        details = _validation_details(error) or " ".join(str(error).split())
        raise ValueError(f"{where}: invalid arguments for {name}: {details}") from None


def _check_dry_run(transform: BasicTransform, name: str, where: str) -> None:
    """Apply the transform once to a dummy image+mask to find inputs it needs but never gets.

    Only "missing input" failures (``KeyError`` such as ``'bboxes'``, albumentations' "requires ...
    missing keys") reject the transform; other failures may come from the dummy's size (a crop
    larger than 96 px) and are left to real data.
    """
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(_DRY_RUN_SIZE, _DRY_RUN_SIZE, 3), dtype=np.uint8)
    mask = np.zeros((_DRY_RUN_SIZE, _DRY_RUN_SIZE), dtype=np.uint8)
    mask[20:50, 30:70] = 1
    probe = copy.deepcopy(transform)
    probe.p = 1.0
    try:
        A.Compose([probe], seed=0)(image=image, mask=mask)
    except KeyError as error:
        raise ValueError(
            f"{where}: {name} needs the input {error.args[0]!r}, which a segmentation dataset "
            "(image + mask only) does not provide"
        ) from None
    except ValueError as error:
        if "missing keys" in str(error):
            raise ValueError(f"{where}: {name} cannot run on image + mask data: {error}") from None
    except Exception:  # noqa: BLE001 - size-dependent failures on the dummy are not the point here
        return


def _validate_entry(entry: Any, path: str) -> None:
    if not isinstance(entry, Mapping):
        raise ValueError(
            f"{_where(path, '')}: expected a mapping like {{name: HorizontalFlip, p: 0.5}}, got {entry!r}"
        )
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{_where(path, '')}: every transform needs a 'name' (got {dict(entry)!r})")
    where = _where(path, name)
    kwargs = {k: v for k, v in entry.items() if k != "name"}
    if name in _RESERVED:
        raise ValueError(f"{where}: {name} is not allowed in a recipe: {_RESERVED[name]}")
    if name not in available_transforms():
        close = _suggest(name, available_transforms())
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"{where}: unknown albumentations transform {name!r}{hint}")
    cls = getattr(A, name)

    if name in COMPOSITIONS:
        children = kwargs.get("transforms")
        if not isinstance(children, Sequence) or isinstance(children, (str, bytes)) or not children:
            raise ValueError(f"{where}: {name} needs a non-empty 'transforms' list of recipe entries")
        for i, child in enumerate(children):
            _validate_entry(child, f"{path}.transforms[{i}]")
        _check_kwargs(cls, name, kwargs, where)
        return

    if not issubclass(cls, ImageOnlyTransform):
        targets = _as_targets(cls)
        if Targets.MASK not in targets:
            supported = ", ".join(sorted(t.value for t in targets if t is not None)) or "none"
            raise ValueError(
                f"{where}: {name} does not support masks (its targets: {supported}); a geometric "
                "transform must move the mask with the image, so it cannot be used for segmentation"
            )
    _check_kwargs(cls, name, kwargs, where)
    transform = _instantiate(cls, name, kwargs, where)
    needs = set(getattr(transform, "targets_as_params", ()) or ()) - _DATA_KEYS
    if needs:
        raise ValueError(
            f"{where}: {name} needs extra input(s) {sorted(needs)} that a segmentation dataset "
            "(image + mask only) does not provide"
        )
    _check_dry_run(transform, name, where)


def _normalize_recipe(recipe: Any) -> list[Any]:
    if recipe is None:
        return []
    if isinstance(recipe, Mapping) or isinstance(recipe, (str, bytes)) or not isinstance(recipe, Sequence):
        raise ValueError(
            f"augmentation recipe must be a list of {{name: <Transform>, ...}} entries, got {type(recipe).__name__}"
        )
    return list(recipe)


def validate_recipe(recipe: Sequence[Mapping[str, Any]] | None) -> None:
    """Check a recipe without images; raise ``ValueError`` naming the entry and the problem.

    Checks, per entry (``recipe[i]``, nested ones as ``recipe[i].transforms[j]``): a ``name`` that
    is an albumentations transform (else close names are suggested), arguments the transform
    accepts and values it validates (each transform is instantiated), that the transform supports
    masks (image-only transforms such as ``RandomBrightnessContrast`` are fine: they leave the
    mask alone; transforms whose ``_targets`` lack ``MASK`` are rejected), and that it needs no
    input a segmentation dataset lacks (``bboxes``, ``mosaic_metadata``, ...; one dry run on a
    dummy 96 px array). ``Normalize``/``ToTensorV2``/``ToFloat``/``FromFloat`` are refused because
    :func:`build_transform` normalises itself. ``None`` or ``[]`` is a valid, empty recipe.
    """
    for i, entry in enumerate(_normalize_recipe(recipe)):
        _validate_entry(entry, f"[{i}]")


def _build_entry(entry: Mapping[str, Any]) -> Any:
    name = entry["name"]
    kwargs = {k: v for k, v in entry.items() if k != "name"}
    cls = getattr(A, name)
    if name in COMPOSITIONS:
        kwargs["transforms"] = [_build_entry(child) for child in kwargs["transforms"]]
    return cls(**kwargs)


def build_transform(
    recipe: Sequence[Mapping[str, Any]] | None,
    *,
    image_size: int,
    train: bool,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    interpolation: int = cv2.INTER_LINEAR,
    seed: int | None = None,
    for_display: bool = False,
) -> A.Compose:
    """The ``albumentations.Compose`` applied to ``image=(H, W, 3) uint8, mask=(H, W) uint8``.

    ``train=True``: the recipe's transforms, then ``Resize(image_size, image_size)``; ``train=False``:
    only the resize (the recipe is still validated; ``interpolation``: the OpenCV flag of the image
    resize, e.g. the backbone's from :mod:`defect_pipeline.ml.preprocess`). Then ``Normalize(mean, std)`` (pixels / 255)
    and ``ToTensorV2``, giving a float32 ``(3, S, S)`` tensor and a ``(S, S)`` uint8 mask tensor.
    ``for_display=True`` leaves out ``Normalize`` and ``ToTensorV2`` (uint8 ``(S, S, 3)`` numpy
    image, numpy mask), for previews.

    Every mask resampling (the resize and any geometric transform of the recipe) uses nearest
    neighbour (``Compose(mask_interpolation=cv2.INTER_NEAREST)`` overrides per-transform
    settings), so class indices are never blended. ``seed`` fixes the Compose's random state
    (``None``: fresh entropy); see the module docstring for DataLoader workers.
    """
    if int(image_size) <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    entries = _normalize_recipe(recipe)
    validate_recipe(entries)
    transforms: list[Any] = [_build_entry(e) for e in entries] if train else []
    transforms.append(
        A.Resize(int(image_size), int(image_size), interpolation=int(interpolation),
                 mask_interpolation=cv2.INTER_NEAREST)
    )
    if not for_display:
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got mean={list(mean)} std={list(std)}")
        transforms.append(A.Normalize(mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std),
                                      max_pixel_value=255.0))
        transforms.append(ToTensorV2())
    return A.Compose(transforms, mask_interpolation=cv2.INTER_NEAREST, seed=seed)

