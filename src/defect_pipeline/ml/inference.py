"""Batch inference over a list of image files: one row per file, whatever happens to it.

:func:`list_images` finds the images of a folder (recursively, by extension) and decides what
to do with symlinks; :func:`first_images` keeps the first N of a listing (``inference.limit``);
:func:`predict_files` streams them (:func:`stream_predictions`, which the
MLflow pyfunc model uses too) through a
:class:`~defect_pipeline.ml.predict.Predictor` in batches, the files decoded in ``num_workers`` loader
processes (:func:`read_images`); :mod:`defect_pipeline.ml.sharded_inference` spreads them over several
processes and merges their rows (:func:`predict_rows`, :func:`as_frame`). Every listed file ends up as a row
with ``status`` ``ok`` (prediction columns filled), ``error`` (unreadable: the reason is in
``error``) or ``skipped`` (a symlink leaving the input folder, when not followed). Masks are kept
as PNG bytes (small: mostly background), so memory stays low for large folders.

:func:`entry_status` is the one place that decides, per entry, whether a path can be read at all
(a symlink loop, a broken link, a folder, a zero-byte file are rows with their reason, never an
exception); the folder listing and the MLflow pyfunc model both call it, and decoding errors (a
decompression bomb, a truncated file) become rows in :func:`stream_predictions`.
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
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from defect_pipeline.data.imageio import load_image
from defect_pipeline.ml.postprocess import Prediction
from defect_pipeline.ml.predict import Predictor
from defect_pipeline.ml.preview import overlay_mask

logger = logging.getLogger(__name__)

COLUMNS = ["path", "relative_path", "status", "error", "width", "height", "label", "defect_score", "defect_area"]


def entry_status(path: str | os.PathLike, *, root: Path | None = None, follow_symlinks: bool = True
                 ) -> tuple[str, str]:
    """``("pending", "")`` when ``path`` is a regular, non-empty file to read, else ``("error" | "skipped", reason)``.

    ``root`` (resolved): a symlink whose target lies outside it is ``skipped`` unless ``follow_symlinks``.
    Never raises for a bad entry: a symlink loop, a broken link, a folder, a missing or empty file and
    an unreadable directory entry are each an ``error`` with the reason.
    """
    path = Path(path)
    try:
        if path.is_symlink():
            try:
                target = path.resolve(strict=True)
            except RuntimeError:  # Python < 3.13 reports a loop as RuntimeError
                return "error", f"symlink loop: {path} points (through links) back to itself"
            except FileNotFoundError:
                return "error", f"broken symlink to {os.readlink(path)}"
            except OSError as error:  # ELOOP on newer Pythons
                return "error", f"unresolvable symlink ({error.strerror or error})"
            if root is not None and not follow_symlinks and not target.is_relative_to(root):
                return "skipped", (f"symlink to {target}, outside the input folder (set inference.follow_symlinks: "
                                   "true to read it)")
        if not path.exists():
            return "error", f"no such file: {path}"
        if not path.is_file():
            return "error", f"not a regular file (a folder or device): {path}"
        if path.stat().st_size == 0:
            return "error", "empty_file: file has 0 bytes"
    except OSError as error:
        return "error", f"{type(error).__name__}: {error}"
    return "pending", ""


def list_images(input_dir: str | os.PathLike, *, extensions: list[str], follow_symlinks: bool = False
                ) -> tuple[pd.DataFrame, list[str]]:
    """Image files under ``input_dir`` (sorted) and the other files that were ignored.

    Hidden files and folders (``.name``) are not searched. Every listed file gets its
    :func:`entry_status`: a symlink whose target lies outside ``input_dir`` is ``skipped`` unless
    ``follow_symlinks``; a broken or looping symlink and an empty file are ``error`` rows. With
    ``follow_symlinks``, a linked folder already listed (a folder loop) is not entered again: it is
    named among the ignored files.
    """
    root = Path(input_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"inference.input_dir {root} is not a folder; set it to the folder of images to "
                                "predict, e.g. --params inference.input_dir=/path/to/images")
    root_real = root.resolve()
    wanted = {e.lower() for e in extensions}
    rows, ignored = [], []
    visited = {root_real}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=follow_symlinks):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if follow_symlinks:  # a linked folder seen before (a loop) is not walked twice
            for name in list(dirnames):
                try:
                    real = Path(dirpath, name).resolve(strict=True)
                except (OSError, RuntimeError) as error:  # vanished or unresolvable: named, not walked
                    dirnames.remove(name)
                    ignored.append(f"{Path(dirpath, name).relative_to(root).as_posix()}/ ({error})")
                    continue
                if real in visited:
                    dirnames.remove(name)
                    ignored.append(f"{Path(dirpath, name).relative_to(root).as_posix()}/ (already walked: {real}; "
                                   "a symlink loop or a second link to it)")
                visited.add(real)
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            relative = path.relative_to(root).as_posix()
            if path.suffix.lower() not in wanted:
                ignored.append(relative)
                continue
            status, reason = entry_status(path, root=root_real, follow_symlinks=follow_symlinks)
            rows.append({"path": str(path), "relative_path": relative, "status": status, "error": reason})
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


def _decode(item: tuple[int, Any]) -> tuple[int, np.ndarray | None, str]:
    """``(index, image, "")`` of an ``(index, path or array)``; ``(index, None, reason)`` when it cannot be read."""
    index, source = item
    try:
        return index, (load_image(Path(source)) if isinstance(source, str | Path) else np.asarray(source)), ""
    except Exception as error:  # noqa: BLE001 - any unreadable file is a row, not a crash
        return index, None, f"{type(error).__name__}: {error}"


class _Decoded(Dataset):
    """:func:`_decode` of each item, for a loader whose worker processes do the decoding."""

    def __init__(self, items: list[tuple[int, Any]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, position: int) -> tuple[int, np.ndarray | None, str]:
        return _decode(self.items[position])


def _as_is(item: Any) -> Any:
    return item


def read_images(items: Iterable[tuple[int, Any]], *, num_workers: int = 0
                ) -> Iterator[tuple[int, np.ndarray | None, str]]:
    """``(index, image or None, error)`` of each ``(index, path or array)``, in order.

    ``num_workers`` > 0: the files are decoded in that many loader processes ahead of the model
    (the main process only predicts); 0: here, one after the other.
    """
    if num_workers < 0:
        raise ValueError(f"inference.num_workers must be >= 0, got {num_workers}")
    if num_workers == 0:
        yield from map(_decode, items)
        return
    loader = DataLoader(_Decoded(list(items)), batch_size=None, shuffle=False, num_workers=num_workers,
                        collate_fn=_as_is, prefetch_factor=4)
    yield from loader


def stream_predictions(items: Iterable[tuple[int, Any]], predictor: Predictor, *, batch_size: int = 16,
                       num_workers: int = 0) -> Iterator[tuple[int, Prediction | None, str, tuple[int, int] | None]]:
    """``(index, prediction or None, error, (height, width) or None)`` for each ``(index, path or image)``.

    Images are read (in ``num_workers`` loader processes, :func:`read_images`) and predicted in batches: each
    run of ``batch_size`` consecutive items is one batch (less its unreadable files, which give an error right
    away), so a batch holds the same images however the items are split between processes
    (:mod:`~defect_pipeline.ml.sharded_inference`). A batch that fails is retried image by image, so one bad
    image never costs the others their prediction. Results come per batch, not necessarily in input order.
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

    for count, (index, image, error) in enumerate(read_images(items, num_workers=num_workers), start=1):
        if image is None:
            yield index, None, error, None
        else:
            pending.append((index, image))
        if count % batch_size == 0 and pending:
            yield from flush(pending)
            pending = []
    if pending:
        yield from flush(pending)


def predict_rows(files: pd.DataFrame, predictor: Predictor, *, batch_size: int = 16, num_workers: int = 0
                 ) -> tuple[list[dict[str, Any]], dict[str, bytes], int]:
    """The rows of ``files`` with the predictions of its ``pending`` ones filled in, the masks (PNG bytes by name)
    and how many images were predicted (:func:`predict_files` without the table)."""
    rows = [dict(r) for r in files.to_dict("records")]
    masks: dict[str, bytes] = {}
    todo = [(index, row["path"]) for index, row in enumerate(rows) if row["status"] == "pending"]
    predicted = 0
    with tqdm(total=len(todo), desc="inference", mininterval=1.0) as bar:
        for index, prediction, error, shape in stream_predictions(todo, predictor, batch_size=batch_size,
                                                                  num_workers=num_workers):
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
    return rows, masks, predicted


def as_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The predictions table of :func:`predict_rows`' rows: :data:`COLUMNS` first, sizes and areas as integers."""
    frame = pd.DataFrame(rows)
    for column in COLUMNS:
        if column not in frame.columns:
            frame[column] = None
    for column in ("width", "height", "defect_area"):  # integers, empty where there is no prediction
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    ordered = COLUMNS + [c for c in frame.columns if c not in COLUMNS]
    return frame[ordered]


def predict_files(files: pd.DataFrame, predictor: Predictor, *, batch_size: int = 16, num_workers: int = 0
                  ) -> InferenceResult:
    """Predict every ``pending`` row of ``files``; others pass through. Unreadable files become ``error`` rows."""
    started = time.perf_counter()
    rows, masks, predicted = predict_rows(files, predictor, batch_size=batch_size, num_workers=num_workers)
    seconds = time.perf_counter() - started
    return InferenceResult(as_frame(rows), masks, seconds, predicted / seconds if seconds > 0 else 0.0)


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
                                            "variant", "members", "weights", "onnx_precision", "onnx_providers")
                  if k in model},
    }
