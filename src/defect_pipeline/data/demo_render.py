"""Renderers of the synthetic demo images: steel-like texture and one defect per image, from a seeded RNG.

Every image is procedurally rendered (smoothed noise, brushed-metal streaks and a mild illumination
gradient, grayscale-ish steel stored as RGB) and carries at most one defect class: ``scratch`` (thin,
long, slightly curved bright or dark line), ``spot`` (one to a few roundish darker blobs with soft
edges) or ``crack`` (dark, jagged, branching random-walk polyline); ``good`` images show texture only.
:func:`render_sample` returns the image and its binary defect mask; its output depends only on the
label, the state of the RNG it is given and the image size. Writing the dataset to disk (seeding
per sample, marker file, idempotence) is :mod:`defect_pipeline.data.demo`'s job.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["DEMO_CLASSES", "GOOD_LABEL", "MIN_IMAGE_SIZE", "render_sample"]

DEMO_CLASSES: tuple[str, ...] = ("scratch", "spot", "crack")
GOOD_LABEL = "good"
MIN_IMAGE_SIZE = 32
_MIN_MASK_PIXELS = 20  # absolute floor; the floor grows with the image (see _min_mask_pixels)
_MIN_MASK_FRACTION = 0.003
_MASK_THRESHOLD = 0.4  # coverage above which a pixel belongs to the defect mask
_SUPERSAMPLE = 4  # line defects are drawn at 4x resolution and box-downsampled (anti-aliasing)
_MAX_DEFECT_TRIES = 50


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
    if size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be >= {MIN_IMAGE_SIZE}, got {image_size}")

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
