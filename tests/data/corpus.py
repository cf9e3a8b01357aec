"""Small fixture images for the data-pipeline tests: good samples and each kind of broken input.

Every writer takes a destination path (parent folders are created) and returns it, so a test
can lay out a raw folder in a few lines. Images are 32-48 px and textured from a seed (random
noise plus a coarse pattern), so two samples with different seeds are never near-duplicates by
perceptual hash, while the same seed always gives the same pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

EXIF_ORIENTATION_TAG = 0x0112
DEFAULT_SIZE = (40, 40)  # (width, height)


def _prepare(path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def textured_array(seed: int, size: tuple[int, int] = DEFAULT_SIZE) -> np.ndarray:
    """A ``(H, W, 3)`` uint8 RGB array with coarse random blocks plus fine noise (seeded)."""
    width, height = size
    rng = np.random.default_rng(seed)
    coarse = rng.integers(40, 216, size=(4, 4, 3)).astype(np.float64)
    blocks = np.kron(coarse, np.ones((height // 4 + 1, width // 4 + 1, 1)))[:height, :width]
    noise = rng.normal(0.0, 12.0, size=(height, width, 3))
    return np.clip(blocks + noise, 0, 255).astype(np.uint8)


def defect_box(size: tuple[int, int] = DEFAULT_SIZE) -> tuple[int, int, int, int]:
    """``(top, left, bottom, right)`` of the defect rectangle the mask writers draw."""
    width, height = size
    return height // 4, width // 4, height // 4 + height // 3, width // 4 + width // 3


def binary_mask_array(size: tuple[int, int] = DEFAULT_SIZE, box: tuple[int, int, int, int] | None = None,
                      value: int = 255) -> np.ndarray:
    """A ``(H, W)`` uint8 mask: ``value`` inside ``box`` (default :func:`defect_box`), 0 elsewhere."""
    width, height = size
    top, left, bottom, right = box if box is not None else defect_box(size)
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[top:bottom, left:right] = value
    return mask


def write_image(path: Path, seed: int = 0, size: tuple[int, int] = DEFAULT_SIZE, quality: int = 95) -> Path:
    """A good textured RGB image (JPEG or PNG, from the extension)."""
    path = _prepare(path)
    image = Image.fromarray(textured_array(seed, size))
    if path.suffix.lower() in (".jpg", ".jpeg"):
        image.save(path, quality=quality)
    else:
        image.save(path)
    return path


def write_mask(path: Path, size: tuple[int, int] = DEFAULT_SIZE, box: tuple[int, int, int, int] | None = None,
               empty: bool = False) -> Path:
    """A clean 0/255 binary PNG mask (all zeros when ``empty``)."""
    path = _prepare(path)
    mask = binary_mask_array(size, box)
    if empty:
        mask[:] = 0
    Image.fromarray(mask, mode="L").save(path)
    return path


def write_sample(folder: Path, stem: str, seed: int, *, with_mask: bool = True,
                 size: tuple[int, int] = DEFAULT_SIZE) -> list[Path]:
    """``<folder>/<stem>.jpg`` plus ``<stem>_mask.png`` (when ``with_mask``); returns the files."""
    files = [write_image(Path(folder) / f"{stem}.jpg", seed, size)]
    if with_mask:
        files.append(write_mask(Path(folder) / f"{stem}_mask.png", size))
    return files


# --- broken and unusual inputs -------------------------------------------------------------


def write_truncated_jpeg(path: Path, seed: int = 0, size: tuple[int, int] = DEFAULT_SIZE) -> Path:
    """A JPEG cut to half its bytes (header intact, scan data missing)."""
    path = write_image(path, seed, size)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_zero_byte(path: Path) -> Path:
    """An empty file with an image extension."""
    path = _prepare(path)
    path.write_bytes(b"")
    return path


def write_text_as_image(path: Path) -> Path:
    """A plain-text file given an image extension (e.g. ``.png``)."""
    path = _prepare(path)
    path.write_text("this is not an image, just some notes\n" * 4, encoding="utf-8")
    return path


def write_text_file(path: Path, text: str = "notes\n") -> Path:
    """Any non-image file (``notes.txt``, ``README.md``)."""
    path = _prepare(path)
    path.write_text(text, encoding="utf-8")
    return path


def write_jpeg_noise_mask(path: Path, size: tuple[int, int] = DEFAULT_SIZE, quality: int = 30) -> Path:
    """A 0/255 binary mask saved as a low-quality grey JPEG, so its edges carry in-between values."""
    path = _prepare(path)
    Image.fromarray(binary_mask_array(size), mode="L").save(path, format="JPEG", quality=quality)
    return path


def write_rgba_png(path: Path, seed: int = 0, size: tuple[int, int] = DEFAULT_SIZE) -> Path:
    """An RGBA PNG whose left half is semi-transparent."""
    path = _prepare(path)
    rgb = textured_array(seed, size)
    alpha = np.full(rgb.shape[:2], 255, dtype=np.uint8)
    alpha[:, : size[0] // 2] = 96
    Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA").save(path)
    return path


def write_16bit_png(path: Path, size: tuple[int, int] = DEFAULT_SIZE) -> Path:
    """A 16-bit grey PNG (mode ``I;16``): a horizontal ramp 0..65535 plus a little texture."""
    path = _prepare(path)
    width, height = size
    ramp = np.linspace(0, 65535, width)[None, :].repeat(height, axis=0)
    rng = np.random.default_rng(16)
    values = np.clip(ramp + rng.normal(0, 800, size=(height, width)), 0, 65535)
    values[:, 0] = 0
    values[:, -1] = 65535
    image = Image.fromarray(values.astype(np.uint16))
    assert image.mode == "I;16", image.mode
    image.save(path)
    return path


def write_palette_mask(path: Path, indices: np.ndarray) -> Path:
    """A palette (mode ``P``) PNG whose pixel values are the class indices in ``indices``."""
    path = _prepare(path)
    image = Image.fromarray(indices.astype(np.uint8), mode="P")
    palette = [0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [128, 128, 128] * 4
    image.putpalette(palette + [0] * (768 - len(palette)))
    image.save(path)
    return path


def upright_defect_image(seed: int, size: tuple[int, int]) -> np.ndarray:
    """A textured ``(H, W, 3)`` image (upright ``size``) with a bright white defect in :func:`defect_box`."""
    array = textured_array(seed, size) // 2
    top, left, bottom, right = defect_box(size)
    array[top:bottom, left:right] = 255
    return array


def write_exif_rotated_jpeg(path: Path, seed: int, upright_size: tuple[int, int]) -> Path:
    """A JPEG with EXIF orientation 6 whose *upright* picture is ``upright_size`` (W, H).

    The stored pixels are the upright picture rotated 90 degrees counter-clockwise (so the raw
    grid is H x W); a viewer rotates them 90 degrees clockwise back to upright.
    """
    path = _prepare(path)
    upright = Image.fromarray(upright_defect_image(seed, upright_size))
    raw = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = 6
    raw.save(path, quality=95, exif=exif.tobytes())
    return path


def write_mask_upright(path: Path, upright_size: tuple[int, int]) -> Path:
    """The defect mask of :func:`write_exif_rotated_jpeg`, drawn on the upright picture."""
    return write_mask(path, upright_size)


def write_mask_raw_grid(path: Path, upright_size: tuple[int, int]) -> Path:
    """The same defect mask, drawn on the raw (un-rotated) pixel grid of the EXIF image."""
    path = _prepare(path)
    upright = Image.fromarray(binary_mask_array(upright_size), mode="L")
    upright.transpose(Image.Transpose.ROTATE_90).save(path)
    return path


def reencode_jpeg(source: Path, path: Path, quality: int) -> Path:
    """The picture of ``source`` saved again at another JPEG quality (a near-duplicate)."""
    path = _prepare(path)
    with Image.open(source) as image:
        image.convert("RGB").save(path, quality=quality)
    return path


def copy_bytes(source: Path, path: Path) -> Path:
    """An exact byte copy of ``source``."""
    path = _prepare(path)
    path.write_bytes(Path(source).read_bytes())
    return path
