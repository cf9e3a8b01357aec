"""What a served model reads and writes: input records, base64 images, and compact masks.

A request is a table of records, each naming one image by exactly one of

* ``path``: an image file on the serving machine, or
* ``image``: the image file's bytes, base64-encoded (a ``data:image/...;base64,`` prefix is allowed;
  raw ``bytes`` are accepted in-process),

:func:`parse_records` turns each record into a path, a decoded RGB array, or a :class:`RecordError`
naming the record and the missing or bad field; a bad record becomes an error row, never a failed
request.

Masks (``(H, W)`` uint8: 0 background, ``1 + i`` defect class ``i``) go back in one of
:data:`MASK_FORMATS` (:func:`encode_mask`; :func:`decode_mask` reverses it):

* ``png`` (default): a base64-encoded 8-bit greyscale PNG of the mask — pixel value = class index;
* ``rle``: ``{"size": [H, W], "values": [...], "lengths": [...]}``, runs of equal values in
  row-major (C) order: ``np.repeat(values, lengths).reshape(size)`` is the mask;
* ``list``: the mask as nested lists of ints (``H`` lists of ``W`` values; large);
* ``array``: the numpy array itself (in-process use only).
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from defect_pipeline.data.imageio import ImageDecodeError, apply_orientation, decode, exif_orientation, image_to_rgb

MASK_FORMATS = ("png", "rle", "list", "array")
INPUT_FIELDS = ("path", "image")


@dataclass(frozen=True)
class RecordError:
    """Why a record of a request could not be predicted (becomes the row's ``error``)."""

    message: str


def _missing(value: Any) -> bool:
    """None, NaN / pd.NA (a key absent from some records of a table), or a blank string."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # an array: not a missing scalar
        return False


def decode_image_field(value: Any) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB of a base64 string (or raw bytes) holding an image file; ``ValueError`` says why not."""
    if isinstance(value, (bytes, bytearray)):
        data = bytes(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.startswith("data:") and "," in text:
            text = text.split(",", 1)[1]
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as error:
            raise ValueError(f"'image' is not valid base64 ({error}); send the image file's bytes base64-encoded") \
                from None
    else:
        raise ValueError(f"'image' must be a base64 string, got {type(value).__name__}")
    if not data:
        raise ValueError("'image' is empty")
    try:
        image = decode(data, "'image'")
    except ImageDecodeError as error:
        raise ValueError(f"'image' is not a decodable image ({error})") from None
    array, _ = image_to_rgb(apply_orientation(image, exif_orientation(image)))
    return array


def parse_records(records: Sequence[dict[str, Any]]) -> list[str | np.ndarray | RecordError]:
    """Each record as a path, a decoded image, or the error that names its missing or bad field."""
    items: list[str | np.ndarray | RecordError] = []
    for index, record in enumerate(records):
        given = {field: record.get(field) for field in INPUT_FIELDS if not _missing(record.get(field))}
        where = f"record {index}"
        if not given:
            others = sorted(k for k, v in record.items() if not _missing(v))
            items.append(RecordError(f"{where}: needs 'path' (an image file on the server) or 'image' (the image "
                                     f"file's bytes, base64-encoded)" + (f"; got {others}" if others else "")))
        elif len(given) == 2:
            items.append(RecordError(f"{where}: give either 'path' or 'image', not both"))
        elif "path" in given:
            path = given["path"]
            items.append(str(path) if isinstance(path, str) else
                         RecordError(f"{where}: 'path' must be a string, got {type(path).__name__}"))
        else:
            try:
                items.append(decode_image_field(given["image"]))
            except ValueError as error:
                items.append(RecordError(f"{where}: {error}"))
    return items


def encode_image(image: np.ndarray) -> str:
    """A base64 PNG of an image array (what a client sends as ``image``)."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def check_mask_format(mask_format: str) -> str:
    if mask_format not in MASK_FORMATS:
        raise ValueError(f"mask_format must be one of {list(MASK_FORMATS)}, got {mask_format!r}")
    return mask_format


def encode_mask(mask: np.ndarray, mask_format: str = "png") -> Any:
    """A mask in ``mask_format`` (see the module docstring)."""
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    if check_mask_format(mask_format) == "array":
        return mask
    if mask_format == "list":
        return mask.tolist()
    if mask_format == "png":
        return encode_image(mask)
    flat = mask.reshape(-1)
    if flat.size == 0:
        return {"size": list(mask.shape), "values": [], "lengths": []}
    starts = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1])
    lengths = np.diff(np.concatenate([starts, [flat.size]]))
    return {"size": list(mask.shape), "values": flat[starts].tolist(), "lengths": lengths.tolist()}


def decode_mask(value: Any, mask_format: str = "png") -> np.ndarray:
    """The ``(H, W)`` uint8 mask of an encoded one (what a client does with the ``mask`` column)."""
    if check_mask_format(mask_format) in ("array", "list"):
        return np.asarray(value, dtype=np.uint8)
    if mask_format == "png":
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(value))))
    values, lengths = np.asarray(value["values"], np.uint8), np.asarray(value["lengths"], np.int64)
    return np.repeat(values, lengths).reshape(value["size"])
