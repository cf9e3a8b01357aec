"""Decoding images and masks exactly one way, for the checks and for training alike.

Every pixel that reaches a model passes through :func:`load_image` and :func:`load_mask`, and
the data checks call the same helpers, so what the report says about a file is what training
will see. Modes are handled explicitly: L/LA/1 grey, RGB, RGBA (alpha dropped), P (palette
converted for images, indices kept for masks), CMYK, and 16-bit grey (scaled to 8 bits).
EXIF orientation is applied to the image; the mask gets the same transform when it was drawn on
the un-rotated pixels (see :func:`decide_mask_transform`). :func:`inspect_sample` is the
process-pool worker of the ``check`` node: one full decode per file, facts out.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imagehash
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy import ndimage

EXIF_ORIENTATION_TAG = 0x0112
ROTATING_ORIENTATIONS = {5, 6, 7, 8}  # orientations that swap width and height

SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


class ImageDecodeError(Exception):
    """A file that cannot be used as an image; ``code`` is a short machine-readable reason."""

    def __init__(self, code: str, detail: str):
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def read_bytes(path: Path) -> bytes:
    """Read a file whole, refusing empty files with a clear reason."""
    data = path.read_bytes()
    if not data:
        raise ImageDecodeError("empty_file", "file has 0 bytes")
    return data


def decode(data: bytes, name: str = "") -> Image.Image:
    """Fully decode image bytes (not just ``verify()``), so truncated files fail here."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except UnidentifiedImageError:
        raise ImageDecodeError("not_an_image", f"cannot identify {name or 'file'} as an image") from None
    except Image.DecompressionBombError as error:
        raise ImageDecodeError("too_large", str(error)) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageDecodeError("corrupt", f"decoding failed ({error})") from None
    return image


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1 = upright) of a decoded image."""
    try:
        value = image.getexif().get(EXIF_ORIENTATION_TAG, 1)
    except Exception:  # malformed EXIF blocks must not sink the image
        return 1
    return int(value) if value in range(1, 9) else 1


def apply_orientation(image: Image.Image, orientation: int) -> Image.Image:
    """Apply an EXIF orientation value to any image (also to a mask that has no EXIF)."""
    method = {
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_270,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_90,
    }.get(orientation)
    return image.transpose(method) if method is not None else image


def image_to_rgb(image: Image.Image) -> tuple[np.ndarray, list[str]]:
    """Convert a decoded image of any supported mode to an ``(H, W, 3)`` uint8 array.

    Returns the array and notes on what the conversion did (``alpha_dropped``,
    ``16bit_scaled``, ...), which the data report counts.
    """
    notes: list[str] = []
    mode = image.mode
    if mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.int64)
        maximum = 65535 if values.max(initial=0) > 255 or mode != "I" else 255
        grey = np.clip(np.round(values * (255.0 / maximum)), 0, 255).astype(np.uint8)
        notes.append("16bit_scaled")
        return np.repeat(grey[..., None], 3, axis=2), notes
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        alpha = np.asarray(image.convert("RGBA"))[..., 3]
        if alpha.min(initial=255) < 255:
            notes.append("alpha_dropped")
    if mode == "P":
        notes.append("palette_converted")
    elif mode == "CMYK":
        notes.append("cmyk_converted")
    elif mode == "F":
        raise ImageDecodeError("unsupported_mode", "32-bit float images are not supported")
    rgb = image.convert("RGB")
    return np.asarray(rgb, dtype=np.uint8), notes


def mask_values(mask: Image.Image) -> np.ndarray:
    """The raw single-channel values of a mask (class indices or grey levels).

    Palette masks keep their indices (the usual class-index encoding); colour masks are
    accepted only when all channels are equal, otherwise the mask is ambiguous and refused.
    """
    mode = mask.mode
    if mode in ("L", "P"):
        return np.asarray(mask, dtype=np.uint8)
    if mode == "1":
        return np.asarray(mask, dtype=np.uint8) * 255
    if mode == "LA":
        return np.asarray(mask.getchannel("L"), dtype=np.uint8)
    if mode in SIXTEEN_BIT_MODES:
        return np.asarray(mask, dtype=np.int64).astype(np.uint16)
    if mode in ("RGB", "RGBA"):
        rgb = np.asarray(mask.convert("RGB"))
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]):
            return rgb[..., 0].copy()
        raise ImageDecodeError(
            "colour_mask",
            f"mask mode {mode} has differing colour channels; save masks as single-channel "
            "grey (binary) or class-index PNGs",
        )
    raise ImageDecodeError("unsupported_mode", f"mask mode {mode} is not supported")


def binarize(values: np.ndarray, threshold: int) -> np.ndarray:
    """Foreground of a binary mask as uint8 {0, 1}.

    0/1 masks are taken as they are; 8-bit masks (0/255, possibly JPEG-noisy) use
    ``value > threshold``; 16-bit masks are scaled to 8 bits first.
    """
    if values.dtype == np.uint16:
        values = (values >> 8).astype(np.uint8) if values.max(initial=0) > 255 else values.astype(np.uint8)
    if values.max(initial=0) <= 1:
        return (values > 0).astype(np.uint8)
    return (values > threshold).astype(np.uint8)


def noisy_pixel_count(values: np.ndarray) -> int:
    """Pixels of a binary mask that are neither background nor a clean foreground value."""
    if values.max(initial=0) <= 1:
        return 0
    top = 65535 if values.dtype == np.uint16 and values.max() > 255 else 255
    return int(np.count_nonzero((values != 0) & (values != top)))


def decide_mask_transform(orientation: int, image_raw_size: tuple[int, int], mask_size: tuple[int, int]) -> str:
    """Whether the image's EXIF orientation must also be applied to the mask.

    A mask that matches the *un-rotated* pixel grid of a 90°-rotated image was drawn on the raw
    pixels and gets the same transform (``"exif"``); otherwise the mask is taken as drawn on the
    displayed (upright) image (``"none"``), which is what labelling tools show.
    """
    if orientation in ROTATING_ORIENTATIONS and mask_size == image_raw_size and mask_size[0] != mask_size[1]:
        return "exif"
    return "none"


def load_image(path: str | Path) -> np.ndarray:
    """Load an image for a model: EXIF-upright, ``(H, W, 3)`` uint8 RGB."""
    image = decode(read_bytes(Path(path)), str(path))
    image = apply_orientation(image, exif_orientation(image))
    array, _ = image_to_rgb(image)
    return array


def load_mask(
    path: str | Path | None,
    *,
    mask_type: str,
    shape: tuple[int, int],
    binarize_threshold: int = 127,
    orientation: int = 1,
    mask_transform: str = "none",
) -> np.ndarray:
    """Load a mask for a model as ``(H, W)`` uint8: {0, 1} for binary, class indices otherwise.

    ``path=None`` (a defect-free image without a mask file) gives an all-background mask.
    """
    if path is None:
        return np.zeros(shape, dtype=np.uint8)
    mask = decode(read_bytes(Path(path)), str(path))
    if mask_transform == "exif":
        mask = apply_orientation(mask, orientation)
    values = mask_values(mask)
    if mask_type == "binary":
        return binarize(values, binarize_threshold)
    return values.astype(np.uint8)


@dataclass(frozen=True)
class InspectTask:
    """One unit of work for :func:`inspect_sample` (picklable for a process pool)."""

    root: str
    image_path: str | None
    mask_path: str | None
    mask_type: str
    binarize_threshold: int


def _inspect_image(path: Path) -> tuple[dict[str, Any], Image.Image | None]:
    facts: dict[str, Any] = {"file_size": path.stat().st_size}
    try:
        data = read_bytes(path)
        facts["content_hash"] = hashlib.sha256(data).hexdigest()
        image = decode(data, path.name)
        orientation = exif_orientation(image)
        facts["raw_size"] = image.size
        facts["mode"] = image.mode
        facts["exif_orientation"] = orientation
        upright = apply_orientation(image, orientation)
        array, notes = image_to_rgb(upright)
        if orientation != 1:
            notes.append("exif_rotated")
        facts["width"], facts["height"] = upright.size
        facts["channels"] = len(upright.getbands())
        facts["phash"] = str(imagehash.phash(Image.fromarray(array).convert("L")))
        facts["image_notes"] = ";".join(notes)
        return facts, upright
    except ImageDecodeError as error:
        facts["image_error"] = str(error)
        return facts, None


def _inspect_mask(path: Path, task: InspectTask, image_facts: dict[str, Any]) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    try:
        mask = decode(read_bytes(path), path.name)
        facts["mask_mode"] = mask.mode
        orientation = image_facts.get("exif_orientation", 1)
        transform = decide_mask_transform(orientation, image_facts.get("raw_size", (-1, -1)), mask.size)
        if transform == "exif":
            mask = apply_orientation(mask, orientation)
        facts["mask_transform"] = transform
        facts["mask_width"], facts["mask_height"] = mask.size
        values = mask_values(mask)
        facts["mask_max_value"] = int(values.max(initial=0))
        if task.mask_type == "binary":
            foreground = binarize(values, task.binarize_threshold)
            facts["mask_noisy_pixels"] = noisy_pixel_count(values)
            counts = {"1": int(foreground.sum())} if foreground.any() else {}
        else:
            foreground = (values > 0).astype(np.uint8)
            histogram = np.bincount(values.ravel().astype(np.int64))
            counts = {str(i): int(n) for i, n in enumerate(histogram) if i > 0 and n > 0}
            facts["mask_noisy_pixels"] = 0
        facts["mask_area"] = int(foreground.sum())
        facts["mask_components"] = int(ndimage.label(foreground, structure=np.ones((3, 3)))[1])
        facts["mask_class_pixels"] = json.dumps(counts, sort_keys=True)
    except ImageDecodeError as error:
        facts["mask_error"] = str(error)
    return facts


def inspect_sample(task: InspectTask) -> dict[str, Any]:
    """Decode one sample's image and mask fully and return the facts the checks need.

    Never raises for a bad file: problems come back as ``image_error`` / ``mask_error`` text
    (``"<code>: <detail>"``) so that every file is accounted for.
    """
    root = Path(task.root)
    facts: dict[str, Any] = {}
    if task.image_path is not None:
        try:
            image_facts, _ = _inspect_image(root / task.image_path)
        except OSError as error:  # unreadable file (permissions, vanished)
            image_facts = {"image_error": f"unreadable: {error.strerror or error}"}
        facts.update(image_facts)
    if task.mask_path is not None:
        try:
            facts.update(_inspect_mask(root / task.mask_path, task, facts))
        except OSError as error:
            facts["mask_error"] = f"unreadable: {error.strerror or error}"
    facts.pop("raw_size", None)
    return facts
