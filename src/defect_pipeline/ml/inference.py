"""Batch inference over a list of image files: one row per file, whatever happens to it.

:func:`list_images` finds the images of a folder (recursively, by extension) and decides what
to do with symlinks; :func:`first_images` keeps the first N of a listing (``inference.limit``);
:func:`predict_files` streams them (:func:`stream_predictions`, which the
MLflow pyfunc model uses too) through a
:class:`~defect_pipeline.ml.predict.Predictor` in batches. Every listed file ends up as a row
with ``status`` ``ok`` (prediction columns filled), ``error`` (unreadable: the reason is in
``error``) or ``skipped`` (a symlink leaving the input folder, when not followed). Masks are kept
as PNG bytes (small: mostly background), so memory stays low for large folders.
"""

from __future__ import annotations

import io
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from defect_pipeline.data.imageio import load_image
from defect_pipeline.ml.postprocess import Prediction
from defect_pipeline.ml.predict import Predictor
from defect_pipeline.ml.preview import overlay_mask

logger = logging.getLogger(__name__)

COLUMNS = ["path", "relative_path", "status", "error", "width", "height", "label", "defect_score", "defect_area"]


def list_images(input_dir: str | os.PathLike, *, extensions: list[str], follow_symlinks: bool = False
                ) -> tuple[pd.DataFrame, list[str]]:
    """Image files under ``input_dir`` (sorted) and the other files that were ignored.

    Hidden files and folders (``.name``) are not searched. A symlink whose target lies outside
    ``input_dir`` is listed with status ``skipped`` unless ``follow_symlinks``; a broken symlink
    is an ``error`` row.
    """
    root = Path(input_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"inference.input_dir {root} is not a folder; set it to the folder of images to "
                                "predict, e.g. --params inference.input_dir=/path/to/images")
    root_real = root.resolve()
    wanted = {e.lower() for e in extensions}
    rows, ignored = [], []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=follow_symlinks):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            relative = path.relative_to(root).as_posix()
            if path.suffix.lower() not in wanted:
                ignored.append(relative)
                continue
            row = {"path": str(path), "relative_path": relative, "status": "pending", "error": ""}
            if path.is_symlink():
                target = path.resolve()
                if not target.exists():
                    row.update(status="error", error=f"broken symlink to {os.readlink(path)}")
                elif not follow_symlinks and not target.is_relative_to(root_real):
                    row.update(status="skipped", error=f"symlink to {target}, outside the input folder "
                                                       "(set inference.follow_symlinks: true to read it)")
            rows.append(row)
    return pd.DataFrame(rows, columns=["path", "relative_path", "status", "error"]), ignored


def first_images(files: pd.DataFrame, limit: int | None) -> pd.DataFrame:
    """The first ``limit`` rows of a listing (all of them for None), whatever their status."""
    if limit is None:
        return files
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"inference.limit must be a whole number >= 1 (or null for every image), got {limit!r}")
    return files.head(limit).reset_index(drop=True)


def _png(mask: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(mask).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


@dataclass
class InferenceResult:
    predictions: pd.DataFrame
    masks: dict[str, bytes] = field(default_factory=dict)  # relative name (no extension) → PNG bytes
    seconds: float = 0.0
    images_per_s: float = 0.0


def stream_predictions(items: Iterable[tuple[int, Any]], predictor: Predictor, *, batch_size: int = 16
                       ) -> Iterator[tuple[int, Prediction | None, str, tuple[int, int] | None]]:
    """``(index, prediction or None, error, (height, width) or None)`` for each ``(index, path or image)``.

    Images are read and predicted in batches of ``batch_size``; an unreadable file gives an error
    right away, and a batch that fails is retried image by image, so one bad image never costs
    the others their prediction. Results come per batch, not necessarily in input order.
    """
    pending: list[tuple[int, np.ndarray]] = []

    def flush(batch: list[tuple[int, np.ndarray]]) -> Iterator[tuple[int, Prediction | None, str, Any]]:
        try:
            predictions = predictor.predict([image for _, image in batch])
        except Exception as error:  # noqa: BLE001 - one bad batch must not sink the others: retry one by one
            if len(batch) == 1:
                index, image = batch[0]
                yield index, None, f"prediction failed: {type(error).__name__}: {error}", image.shape[:2]
                return
            for item in batch:
                yield from flush([item])
            return
        for (index, image), prediction in zip(batch, predictions, strict=True):
            yield index, prediction, "", image.shape[:2]

    for index, item in items:
        try:
            image = load_image(Path(item)) if isinstance(item, str | Path) else np.asarray(item)
        except Exception as error:  # noqa: BLE001 - any unreadable file is a row, not a crash
            yield index, None, f"{type(error).__name__}: {error}", None
            continue
        pending.append((index, image))
        if len(pending) >= batch_size:
            yield from flush(pending)
            pending = []
    if pending:
        yield from flush(pending)


def predict_files(files: pd.DataFrame, predictor: Predictor, *, batch_size: int = 16) -> InferenceResult:
    """Predict every ``pending`` row of ``files``; others pass through. Unreadable files become ``error`` rows."""
    rows = [dict(r) for r in files.to_dict("records")]
    masks: dict[str, bytes] = {}
    todo = [(index, row["path"]) for index, row in enumerate(rows) if row["status"] == "pending"]
    started = time.perf_counter()
    predicted = 0
    with tqdm(total=len(todo), desc="inference", mininterval=1.0) as bar:
        for index, prediction, error, shape in stream_predictions(todo, predictor, batch_size=batch_size):
            row = rows[index]
            if shape is not None:
                row.update(height=int(shape[0]), width=int(shape[1]))
            if prediction is None:
                row.update(status="error", error=error)
            else:
                name = str(Path(row["relative_path"]).with_suffix(""))
                masks[name] = _png(prediction.mask)
                row.update(prediction.row(), status="ok", mask_file=f"{name}.png")
                predicted += 1
            bar.update()
    seconds = time.perf_counter() - started
    frame = pd.DataFrame(rows)
    for column in COLUMNS:
        if column not in frame.columns:
            frame[column] = None
    for column in ("width", "height", "defect_area"):  # integers, empty where there is no prediction
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    ordered = COLUMNS + [c for c in frame.columns if c not in COLUMNS]
    return InferenceResult(frame[ordered], masks, seconds, predicted / seconds if seconds > 0 else 0.0)


def lazy_mask(png: bytes) -> Callable[[], Image.Image]:
    """A callable returning the mask image (for Kedro's lazily-saving PartitionedDataset)."""
    return lambda: Image.open(io.BytesIO(png))


def lazy_overlay(image_path: str, png: bytes) -> Callable[[], Image.Image]:
    """A callable that re-reads the image and blends its predicted mask in."""
    def render() -> Image.Image:
        image = load_image(Path(image_path))
        mask = np.asarray(Image.open(io.BytesIO(png)))
        return Image.fromarray(overlay_mask(image, mask))

    return render


def summary(result: InferenceResult, *, thresholds: dict[str, Any], thresholds_source: str, model: dict[str, Any],
            backend: str, input_description: str, ignored: list[str], listed: int | None = None,
            limit: int | None = None, output_dir: str | None = None) -> dict[str, Any]:
    """What ``inference_summary.json`` holds: counts per status and label, speed, thresholds, model; how many
    images were listed and the ``limit`` that kept the first ones; where the outputs went."""
    frame = result.predictions
    status = frame["status"].value_counts().to_dict()
    return {
        "input": input_description, "files": int(len(frame)),
        "listed_files": int(len(frame) if listed is None else listed), "limit": limit, "output_dir": output_dir,
        "status": {k: int(v) for k, v in status.items()},
        "ignored_files": ignored[:100], "ignored_count": len(ignored),
        "labels": {k: int(v) for k, v in frame.loc[frame["status"] == "ok", "label"].value_counts().items()},
        "seconds": round(result.seconds, 3), "images_per_s": round(result.images_per_s, 2), "backend": backend,
        "thresholds": thresholds, "thresholds_source": thresholds_source,
        "model": {k: model.get(k) for k in ("backbone", "decoder", "image_size", "input_mode", "tile_overlap", "stage",
                                            "weights_sha256", "mlflow_run_id", "source_checkpoint", "tta", "ensemble",
                                            "variant", "members", "weights") if k in model},
    }
