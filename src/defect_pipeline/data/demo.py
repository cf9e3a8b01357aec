"""Built-in demo dataset: a deterministic, seeded generator of SYNTHETIC industrial steel-surface images.

Every image is procedurally rendered (smoothed noise, brushed-metal streaks and a mild illumination
gradient, grayscale-ish steel stored as RGB) and carries at most one defect class: ``scratch`` (thin,
long, slightly curved bright or dark line), ``spot`` (one to a few roundish darker blobs with soft
edges) or ``crack`` (dark, jagged, branching random-walk polyline); ``good`` images show texture only.
The dataset is written in the raw layout a user would have — one folder per label, each defect image
with a binary (0/255, mode "L", PNG) mask beside it named ``<stem>_mask.png`` — plus a marker file at
the root that states the data are synthetic and records the generator signature. Each sample is drawn
from its own ``np.random.default_rng([seed, label_index, i])`` so the output is byte-identical on every
run and independent of generation order; a second call with the same spec is a no-op, a changed spec
regenerates only the files this generator owns, and a foreign non-empty folder is never overwritten.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "DEMO_CLASSES",
    "GOOD_LABEL",
    "MARKER_FILE",
    "GENERATOR_VERSION",
    "DemoSpec",
    "render_sample",
    "write_demo_dataset",
    "demo_signature",
]

DEMO_CLASSES: tuple[str, ...] = ("scratch", "spot", "crack")
GOOD_LABEL = "good"
MARKER_FILE = "SYNTHETIC_DEMO_DATA.md"
GENERATOR_VERSION = "1"

#: Stable per-label index used to seed each sample (independent of ``DemoSpec.classes`` order).
_LABEL_INDEX: dict[str, int] = {name: idx for idx, name in enumerate((*DEMO_CLASSES, GOOD_LABEL))}
_IMAGE_FORMATS = ("jpg", "png")
_JPEG_QUALITY = 92
_MIN_IMAGE_SIZE = 32
_MIN_MASK_PIXELS = 20  # absolute floor; the floor grows with the image (see _min_mask_pixels)
_MIN_MASK_FRACTION = 0.003
_MASK_THRESHOLD = 0.4  # coverage above which a pixel belongs to the defect mask
_SUPERSAMPLE = 4  # line defects are drawn at 4x resolution and box-downsampled (anti-aliasing)
_MAX_DEFECT_TRIES = 50
_SIGNATURE_RE = re.compile(r"^signature:\s*([0-9a-f]{64})\s*$", re.MULTILINE)
_LABELS_RE = re.compile(r"^labels:\s*(.*)$", re.MULTILINE)


@dataclass(frozen=True)
class DemoSpec:
    """Parameters of the synthetic demo dataset (all of them enter the signature)."""

    seed: int = 42
    images_per_class: int = 40
    good_images: int = 40
    image_size: int = 128
    classes: tuple[str, ...] = DEMO_CLASSES
    image_format: str = "jpg"


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


def _resize_field(field: np.ndarray, size: int) -> np.ndarray:
    """Bicubically upsample a small float32 field to ``size x size``."""
    img = Image.fromarray(np.ascontiguousarray(field, dtype=np.float32))
    return np.asarray(img.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Unit-variance-ish smooth noise with about ``cells`` features across the image."""
    cells = max(2, int(cells))
    grid = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    return _resize_field(grid, size)


def _brushed_streaks(rng: np.random.Generator, size: int) -> np.ndarray:
    """Brushed-metal streak field: noise box-filtered along one (slightly rotated) axis, std ~1."""
    big = int(math.ceil(size * 1.5))
    length = max(4, int(size * rng.uniform(0.25, 0.6)))
    noise = rng.standard_normal((big, big + length)).astype(np.float32)
    csum = np.cumsum(noise, axis=1, dtype=np.float64)
    csum = np.concatenate([np.zeros((big, 1)), csum], axis=1)
    streak = ((csum[:, length:] - csum[:, :-length]) / math.sqrt(length))[:, :big].astype(np.float32)
    # Fine hairline streaks (short correlation) on top of the long ones.
    short = max(2, length // 6)
    noise2 = rng.standard_normal((big, big + short)).astype(np.float32)
    csum2 = np.concatenate([np.zeros((big, 1)), np.cumsum(noise2, axis=1, dtype=np.float64)], axis=1)
    fine = ((csum2[:, short:] - csum2[:, :-short]) / math.sqrt(short))[:, :big].astype(np.float32)
    field = 0.8 * streak + 0.45 * fine
    angle = float(rng.uniform(-8.0, 8.0) + (90.0 if rng.random() < 0.3 else 0.0))
    rotated = Image.fromarray(field).rotate(angle, resample=Image.Resampling.BILINEAR)
    off = (big - size) // 2
    return np.asarray(rotated, dtype=np.float32)[off : off + size, off : off + size]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Grayscale steel texture (float32, H x W, roughly 0..255) without defects."""
    base = rng.uniform(110.0, 165.0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1) - 0.5
    theta = rng.uniform(0.0, 2.0 * math.pi)
    gradient = (xx * math.cos(theta) + yy * math.sin(theta)) * rng.uniform(12.0, 30.0)
    cy, cx = rng.uniform(-0.3, 0.3, size=2)
    vignette = -((xx - cx) ** 2 + (yy - cy) ** 2) * rng.uniform(0.0, 30.0)
    low = _smooth_noise(rng, size, 3) * rng.uniform(3.0, 7.0)
    mid = _smooth_noise(rng, size, size // 10) * rng.uniform(1.5, 3.5)
    streaks = _brushed_streaks(rng, size) * rng.uniform(4.0, 8.0)
    return (base + gradient + vignette + low + mid + streaks).astype(np.float32)


def _draw_coverage(size: int, strokes: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of polylines; each stroke is (points (N,2) xy, widths (N-1,))."""
    ss = _SUPERSAMPLE
    canvas = Image.new("L", (size * ss, size * ss), 0)
    draw = ImageDraw.Draw(canvas)
    for points, widths in strokes:
        pts = (np.asarray(points, dtype=np.float64) + 0.5) * ss
        for k in range(len(pts) - 1):
            w = max(1, int(round(float(widths[k]) * ss)))
            p0, p1 = tuple(pts[k]), tuple(pts[k + 1])
            draw.line([p0, p1], fill=255, width=w)
            if w > 2:  # round joints so consecutive segments do not leave notches
                r = w / 2.0
                draw.ellipse([p1[0] - r, p1[1] - r, p1[0] + r, p1[1] + r], fill=255)
    small = canvas.reduce(ss)
    return np.asarray(small, dtype=np.float32) / 255.0


def _scratch(rng: np.random.Generator, size: int, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Thin, long, slightly curved bright or dark line(s); returns (image, coverage)."""
    scale = size / 128.0
    strokes = []
    n_lines = 1 if rng.random() < 0.8 else 2
    for _ in range(n_lines):
        length = size * rng.uniform(0.45, 0.95)
        angle = rng.uniform(0.0, math.pi)
        direction = np.array([math.cos(angle), math.sin(angle)])
        normal = np.array([-direction[1], direction[0]])
        center = rng.uniform(0.3, 0.7, size=2) * size
        p0 = center - direction * length / 2
        p2 = center + direction * length / 2
        p1 = center + normal * length * rng.uniform(-0.18, 0.18)
        t = np.linspace(0.0, 1.0, 48)[:, None]
        pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
        width = max(1.0, rng.uniform(1.0, 3.0) * scale)
        taper = np.clip(np.sin(np.linspace(0.05, math.pi - 0.05, len(pts) - 1)) * 1.6, 0.55, 1.0)
        strokes.append((pts, np.maximum(width * taper, 0.8)))
    cov = _draw_coverage(size, strokes)
    sign = 1.0 if rng.random() < 0.5 else -1.0
    amp = rng.uniform(38.0, 70.0)
    along = 0.7 + 0.3 * np.clip(_smooth_noise(rng, size, 4) * 0.5 + 0.5, 0.0, 1.0)
    return img + sign * amp * cov * along, cov


def _spot(rng: np.random.Generator, size: int, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One to a few roundish darker blobs (pits/stains) with soft edges; returns (image, coverage)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cov = np.zeros((size, size), dtype=np.float32)
    n_blobs = int(rng.choice([1, 1, 2, 2, 3, 4]))
    for _ in range(n_blobs):
        radius = max(3.0, size * rng.uniform(0.03, 0.085))
        cx, cy = rng.uniform(radius + 2, size - radius - 2, size=2)
        aspect = rng.uniform(0.7, 1.0)
        rot = rng.uniform(0.0, math.pi)
        dx, dy = xx - cx, yy - cy
        u = dx * math.cos(rot) + dy * math.sin(rot)
        v = (-dx * math.sin(rot) + dy * math.cos(rot)) / aspect
        r = np.sqrt(u * u + v * v)
        phi = np.arctan2(v, u)
        wobble = (
            1.0
            + rng.uniform(0.0, 0.15) * np.cos(2 * phi + rng.uniform(0, 2 * math.pi))
            + rng.uniform(0.0, 0.1) * np.cos(3 * phi + rng.uniform(0, 2 * math.pi))
        )
        d = r / (radius * wobble)
        soft = rng.uniform(0.25, 0.45)  # edge softness, relative to the radius
        blob = np.clip((1.0 + soft - d) / (2 * soft), 0.0, 1.0)
        blob = blob * blob * (3 - 2 * blob)  # smoothstep
        cov = np.maximum(cov, blob.astype(np.float32))
    depth = rng.uniform(0.28, 0.5)
    mottling = 0.85 + 0.15 * np.clip(_smooth_noise(rng, size, size // 8), -1.0, 1.0)
    return img * (1.0 - depth * cov * mottling), cov


def _random_walk(
    rng: np.random.Generator, start: np.ndarray, angle: float, n_steps: int, step: float
) -> tuple[np.ndarray, np.ndarray]:
    """Jagged random-walk polyline with mean-reverting heading; returns (points (N,2), headings (N-1,))."""
    turns = rng.normal(0.0, 0.45, size=n_steps)
    headings = np.empty(n_steps)
    h = angle
    for k in range(n_steps):  # n_steps is small (< ~60); heading must be sequential
        h = h + turns[k] + 0.15 * (angle - h)
        headings[k] = h
    lengths = step * rng.uniform(0.6, 1.4, size=n_steps)
    deltas = np.stack([np.cos(headings), np.sin(headings)], axis=1) * lengths[:, None]
    pts = np.vstack([start[None, :], start[None, :] + np.cumsum(deltas, axis=0)])
    return pts, headings


def _crack(rng: np.random.Generator, size: int, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dark, jagged, branching random-walk polyline; returns (image, coverage)."""
    scale = size / 128.0
    step = max(1.5, rng.uniform(2.0, 3.5) * scale)
    total = size * rng.uniform(0.4, 0.8)
    n_steps = max(8, int(total / step))
    start = rng.uniform(0.2, 0.8, size=2) * size
    angle = rng.uniform(0.0, 2 * math.pi)
    main, headings = _random_walk(rng, start, angle, n_steps, step)
    w_main = max(1.0, rng.uniform(1.4, 2.6) * scale)
    taper = np.linspace(1.0, 0.45, n_steps) if rng.random() < 0.5 else np.linspace(0.45, 1.0, n_steps)
    strokes = [(main, np.maximum(w_main * taper, 0.8))]
    for _ in range(int(rng.integers(1, 4))):
        k = int(rng.integers(n_steps // 5, max(n_steps // 5 + 1, 4 * n_steps // 5)))
        b_angle = float(headings[min(k, n_steps - 1)] + rng.choice([-1.0, 1.0]) * rng.uniform(0.4, 1.1))
        b_steps = max(3, int(n_steps * rng.uniform(0.2, 0.5)))
        branch, _ = _random_walk(rng, main[k], b_angle, b_steps, step * 0.8)
        w_b = max(0.8, w_main * rng.uniform(0.5, 0.8))
        strokes.append((branch, np.maximum(w_b * np.linspace(1.0, 0.5, b_steps), 0.8)))
    cov = _draw_coverage(size, strokes)
    depth = rng.uniform(0.45, 0.7)
    return img * (1.0 - depth * cov), cov


_RENDERERS = {"scratch": _scratch, "spot": _spot, "crack": _crack}


def _min_mask_pixels(size: int) -> int:
    """Smallest accepted defect area: 20 px, or 0.3 % of the image when that is larger."""
    return max(_MIN_MASK_PIXELS, int(round(_MIN_MASK_FRACTION * size * size)))


def render_sample(label: str, *, rng: np.random.Generator, image_size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Render one synthetic sample of ``label``.

    Returns an ``(H, W, 3)`` uint8 RGB image and an ``(H, W)`` uint8 mask with values in ``{0, 255}``
    marking exactly the defect pixels (at least ``max(20, 0.3 % of H*W)`` of them), or ``None`` as
    the mask for ``good``.
    The output depends only on ``label``, the state of ``rng`` and ``image_size``.
    """
    if label != GOOD_LABEL and label not in _RENDERERS:
        raise ValueError(f"unknown demo label {label!r}; expected one of {(*DEMO_CLASSES, GOOD_LABEL)}")
    size = int(image_size)
    if size < _MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be >= {_MIN_IMAGE_SIZE}, got {image_size}")

    gray = _background(rng, size)
    mask: np.ndarray | None = None
    if label != GOOD_LABEL:
        min_pixels = _min_mask_pixels(size)
        for _ in range(_MAX_DEFECT_TRIES):
            defected, cov = _RENDERERS[label](rng, size, gray)
            binary = cov >= _MASK_THRESHOLD
            if int(binary.sum()) >= min_pixels:
                break
        else:  # pragma: no cover - geometry makes this practically impossible
            raise RuntimeError(f"could not render a {label!r} defect with >= {min_pixels} mask pixels")
        gray = defected
        mask = np.where(binary, 255, 0).astype(np.uint8)

    # Sensor grain (mostly shared across channels) and a faint steel-blue tint.
    grain = rng.normal(0.0, rng.uniform(2.0, 4.0), size=(size, size)).astype(np.float32)
    chroma = rng.normal(0.0, 0.8, size=(size, size, 3)).astype(np.float32)
    tint = 1.0 + np.array([-1.0, 0.0, 1.0], dtype=np.float32) * rng.uniform(0.0, 0.035)
    rgb = (gray + grain)[:, :, None] * tint[None, None, :] + chroma
    image = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    return image, mask


# --------------------------------------------------------------------------------------------------
# Dataset on disk
# --------------------------------------------------------------------------------------------------


def _validate(spec: DemoSpec) -> None:
    """Raise ``ValueError`` for an inconsistent spec."""
    if not isinstance(spec.seed, int) or spec.seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {spec.seed!r}")
    if spec.images_per_class < 1:
        raise ValueError(f"images_per_class must be >= 1, got {spec.images_per_class}")
    if spec.good_images < 0:
        raise ValueError(f"good_images must be >= 0, got {spec.good_images}")
    if spec.image_size < _MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be >= {_MIN_IMAGE_SIZE}, got {spec.image_size}")
    if not spec.classes:
        raise ValueError("classes must name at least one defect class")
    unknown = [c for c in spec.classes if c not in DEMO_CLASSES]
    if unknown or len(set(spec.classes)) != len(spec.classes):
        raise ValueError(f"classes must be distinct members of {DEMO_CLASSES}, got {spec.classes!r}")
    if spec.image_format not in _IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {_IMAGE_FORMATS}, got {spec.image_format!r}")


def demo_signature(spec: DemoSpec) -> str:
    """SHA-256 hex digest of all ``spec`` fields plus :data:`GENERATOR_VERSION`."""
    payload = asdict(spec)
    payload["classes"] = list(spec.classes)
    payload["generator_version"] = GENERATOR_VERSION
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


def _counts(spec: DemoSpec) -> dict[str, int]:
    counts = {c: spec.images_per_class for c in spec.classes}
    if spec.good_images > 0:
        counts[GOOD_LABEL] = spec.good_images
    return counts


def _expected_files(spec: DemoSpec) -> list[tuple[str, int, str, str | None]]:
    """(label, index, image relpath, mask relpath or None) for every sample of ``spec``."""
    out = []
    for label, n in _counts(spec).items():
        for i in range(n):
            stem = f"{label}/{label}_{i:04d}"
            mask = f"{stem}_mask.png" if label != GOOD_LABEL else None
            out.append((label, i, f"{stem}.{spec.image_format}", mask))
    return out


def _marker_text(spec: DemoSpec, signature: str | None, labels: list[str]) -> str:
    status = "complete" if signature else "in-progress (generation was interrupted if this persists)"
    counts = _counts(spec)
    lines = [
        "# SYNTHETIC DEMO DATA",
        "",
        "**Everything in this folder is synthetic.** The images are procedurally rendered steel-like",
        "surfaces with artificial defects, generated by `defect_pipeline.data.demo.write_demo_dataset`.",
        "They are not photographs of real parts and must not be used to make claims about real",
        "inspection performance. Delete this folder at any time; it is regenerated from the seed.",
        "",
        f"status: {status}",
        f"signature: {signature if signature else 'pending'}",
        f"generator_version: {GENERATOR_VERSION}",
        f"seed: {spec.seed}",
        f"image_size: {spec.image_size}",
        f"image_format: {spec.image_format}",
        f"images_per_class: {spec.images_per_class}",
        f"good_images: {spec.good_images}",
        f"labels: {', '.join(labels)}",
        "counts: " + ", ".join(f"{k}={v}" for k, v in counts.items()),
        "",
        "## Layout",
        "",
        f"- `<label>/<label>_<i:04d>.{spec.image_format}`: RGB image, one folder per label",
        "- `<label>/<label>_<i:04d>_mask.png`: binary mask (mode L, 0 = background, 255 = defect),",
        f"  only for defect labels ({', '.join(spec.classes)}); `{GOOD_LABEL}` images have no mask",
        f"- `{MARKER_FILE}`: this file, written last; its signature makes regeneration idempotent",
        "",
        "Each sample `i` of label `L` is drawn from `numpy.random.default_rng([seed, label_index(L), i])`",
        f"with label_index = {json.dumps(_LABEL_INDEX)}.",
        "",
    ]
    return "\n".join(lines)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _read_marker(marker: Path) -> tuple[str | None, list[str]]:
    """(signature or None, labels listed) from an existing marker file."""
    try:
        text = marker.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None, []
    sig = _SIGNATURE_RE.search(text)
    labels_m = _LABELS_RE.search(text)
    labels = [s.strip() for s in labels_m.group(1).split(",")] if labels_m else []
    return (sig.group(1) if sig else None), [lb for lb in labels if lb in _LABEL_INDEX]


def _remove_owned(root: Path, labels: list[str]) -> None:
    """Delete only files this generator writes (``<label>_NNNN[_mask].(jpg|png)``) and empty label dirs."""
    for label in labels:
        folder = root / label
        if not folder.is_dir():
            continue
        pattern = re.compile(rf"^{re.escape(label)}_\d{{4,}}(_mask)?\.(jpg|png)(\.tmp)?$")
        for entry in folder.iterdir():
            if entry.is_file() and pattern.match(entry.name):
                entry.unlink()
        try:
            folder.rmdir()
        except OSError:
            pass  # the user keeps other files there: leave the folder


def _save_image(image: np.ndarray, path: Path, image_format: str) -> None:
    """Save deterministically (fixed JPEG quality/subsampling, no EXIF or time metadata)."""
    img = Image.fromarray(image)
    if image_format == "jpg":
        img.save(path, format="JPEG", quality=_JPEG_QUALITY, subsampling=0, optimize=False)
    else:
        img.save(path, format="PNG", compress_level=6)


def write_demo_dataset(root: str | os.PathLike, spec: DemoSpec = DemoSpec()) -> dict:
    """Write the synthetic demo dataset for ``spec`` under ``root`` (idempotently).

    If ``root`` already holds a complete dataset with the same signature nothing is touched and the
    summary has ``generated=False``. If it holds one with another signature (or an interrupted one),
    only the files this generator owns are removed and the dataset is regenerated. A non-empty
    ``root`` without marker raises :class:`FileExistsError`. The marker is written last.

    Returns a summary dict with keys ``root``, ``seed``, ``counts`` (per label), ``files_written``
    (number of image and mask files written by this call), ``n_files`` (images + masks in the
    dataset), ``image_size``, ``image_format``, ``signature`` and ``generated``.
    """
    _validate(spec)
    root_path = Path(root)
    signature = demo_signature(spec)
    expected = _expected_files(spec)
    marker = root_path / MARKER_FILE
    n_files = sum(1 + (mask is not None) for _, _, _, mask in expected)
    summary = {
        "root": str(root_path),
        "seed": spec.seed,
        "counts": _counts(spec),
        "files_written": 0,
        "n_files": n_files,
        "image_size": spec.image_size,
        "image_format": spec.image_format,
        "signature": signature,
        "generated": False,
    }

    old_labels: list[str] = []
    if root_path.exists():
        if not root_path.is_dir():
            raise FileExistsError(f"{root_path} exists and is not a directory; refusing to overwrite it")
        if marker.is_file():
            old_sig, old_labels = _read_marker(marker)
            if old_sig == signature and all(
                (root_path / img).is_file() and (mask is None or (root_path / mask).is_file())
                for _, _, img, mask in expected
            ):
                return summary
        elif any(root_path.iterdir()):
            raise FileExistsError(
                f"{root_path} is not empty and has no {MARKER_FILE}; refusing to overwrite a folder "
                "that the demo-data generator did not create (choose an empty or new path)"
            )

    new_labels = list(_counts(spec))
    all_labels = list(dict.fromkeys([*old_labels, *new_labels]))
    root_path.mkdir(parents=True, exist_ok=True)
    # In-progress marker first: an interrupted run is recognised (no signature) and cleaned next time.
    _write_text_atomic(marker, _marker_text(spec, None, all_labels))
    _remove_owned(root_path, all_labels)

    written = 0
    for label, i, img_rel, mask_rel in expected:
        rng = np.random.default_rng([spec.seed, _LABEL_INDEX[label], i])
        image, mask = render_sample(label, rng=rng, image_size=spec.image_size)
        (root_path / label).mkdir(exist_ok=True)
        _save_image(image, root_path / img_rel, spec.image_format)
        written += 1
        if mask_rel is not None and mask is not None:
            Image.fromarray(mask).save(root_path / mask_rel, format="PNG", compress_level=6)
            written += 1

    _write_text_atomic(marker, _marker_text(spec, signature, new_labels))
    summary["files_written"] = written
    summary["generated"] = True
    return summary
