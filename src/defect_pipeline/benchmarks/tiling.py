"""Sliding-window prediction: peak memory and speed as the image grows, at a fixed tile size.

``python -m defect_pipeline.benchmarks tiling`` builds a randomly initialised ``convnext_atto``
model package with ``input_mode: tile`` (speed and memory do not depend on what the weights
learned), then predicts one random image per size (default 512², 1024², 2048², 4096 x 3072) with
:class:`~defect_pipeline.ml.predict.Predictor` — tiles, stitching and thresholding, as inference
does. Each size runs in a fresh worker process, so one size's allocations cannot hide another's:

* **peak RSS** — the process's peak resident memory while predicting, above its resident memory
  after loading the model and decoding the image (Linux ``VmHWM``, reset through
  ``/proc/self/clear_refs``; elsewhere ``ru_maxrss``, which cannot be reset, so the column is then
  a lower bound);
* **full-size arrays** — the peak of numpy allocations (``tracemalloc``): the stitched
  probabilities, the weight map and the decision arrays, all at the image's own size, plus the
  current batch of tiles. They must grow with the pixels and no faster;
* **the rest** — peak RSS minus full-size arrays: the network's memory for one batch of tiles and
  the allocator's slack. This is what sliding windows bound; it must stay flat as the image grows;
* **images/s and tiles/s** — the rate of the measured prediction itself (first call included)
  when the image has at least ``--timed-tiles`` tiles; a smaller image is predicted again until
  about that many tiles were timed, and those repeats give its rate.

The section ``tiling`` of docs/benchmarks.md is replaced, with the machine named.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from defect_pipeline.benchmarks import describe_machine, write_section
from defect_pipeline.markdown import markdown_table

SIZES = ("512x512", "1024x1024", "2048x2048", "4096x3072")  # width x height
CLASSES = ("inclusion", "patches", "scratches")


def build_package(folder: Path, *, backbone: str, tile: int, decoder_channels: int) -> Path:
    """A random-init ``backbone`` + FPN package that predicts by sliding ``tile`` px windows."""
    from defect_pipeline.ml.labels import LabelSpace
    from defect_pipeline.ml.models import create_model
    from defect_pipeline.ml.package import ModelPackage

    labels = LabelSpace(CLASSES, has_good=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*random initialisation")
        net = create_model(backbone, num_image_classes=labels.num_image_classes,
                           num_seg_classes=labels.num_seg_classes, decoder_channels=decoder_channels,
                           image_size=tile)
    state = {"model": net.state_dict(), "labels": labels.to_dict(), "stage": "benchmark",
             "model_meta": {"backbone": backbone, "decoder": net.decoder_name, "seg_mode": "multiclass",
                            "image_size": tile, "input_mode": "tile"},
             "config": {"model": {"decoder_channels": decoder_channels}}}
    return ModelPackage.from_checkpoint(state, source="random initialisation (benchmark)").save(folder)


def _status_mib(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _status_mib("VmHWM") is not None


def _peak_rss_mib(resettable: bool) -> float:
    if resettable:
        return float(_status_mib("VmHWM"))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker(package: str, width: int, height: int, *, overlap: float, tile_batch: int, repeats: int,
           threads: int) -> dict[str, Any]:
    """Measure one image size in this (fresh) process."""
    import torch

    from defect_pipeline.ml.predict import Predictor
    from defect_pipeline.ml.tiling import TileGrid

    torch.set_num_threads(threads)
    predictor = Predictor.from_folder(package, tile_overlap=overlap, tile_batch_size=tile_batch)
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    resettable = _reset_peak_rss()
    baseline = _status_mib("VmRSS") if resettable else _peak_rss_mib(False)
    tracemalloc.start()
    started = time.perf_counter()
    predictor.predict([image])
    first_seconds = time.perf_counter() - started
    numpy_peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    peak = _peak_rss_mib(resettable) - baseline
    seconds = first_seconds
    if repeats > 0:
        started = time.perf_counter()
        for _ in range(repeats):
            predictor.predict([image])
        seconds = (time.perf_counter() - started) / repeats
    tiles = len(TileGrid.cover(height, width, predictor.image_size, overlap))
    return {"width": width, "height": height, "tiles": tiles, "peak_rss_mib": peak, "numpy_peak_mib": numpy_peak,
            "rest_mib": peak - numpy_peak, "seconds": seconds, "first_seconds": first_seconds,
            "images_per_s": 1.0 / seconds, "tiles_per_s": tiles / seconds, "rss_resettable": resettable}


def _repeats(tiles: int, budget_tiles: int) -> int:
    """Timed repeats after the measured pass: none when that pass already ran ``budget_tiles`` tiles."""
    return 0 if tiles >= budget_tiles else max(1, round(budget_tiles / tiles))


def render(rows: list[dict[str, Any]], args: argparse.Namespace, command: str) -> str:
    """The section: the table and what it shows, computed from the rows."""
    table = [[f"{r['width']} × {r['height']}", f"{r['width'] * r['height'] / 1e6:.2f}", r["tiles"],
              f"{r['images_per_s']:.2f}", f"{r['tiles_per_s']:.1f}", f"{r['peak_rss_mib']:.0f}",
              f"{r['numpy_peak_mib']:.0f}", f"{r['rest_mib']:.0f}"] for r in rows]
    rest = [r["rest_mib"] for r in rows]
    per_pixel = [r["numpy_peak_mib"] * 2**20 / (r["width"] * r["height"]) for r in rows]
    largest = rows[-1]
    flat = max(rest) - min(rest) <= max(64.0, 0.25 * max(rest))
    verdict = (f"The memory that is not a full-size array stays within {min(rest):.0f}–{max(rest):.0f} MiB from "
               f"{rows[0]['width']} × {rows[0]['height']} to {largest['width']} × {largest['height']} "
               f"({largest['tiles']} tiles): **flat**" if flat else
               f"The memory that is not a full-size array ranges from {min(rest):.0f} to {max(rest):.0f} MiB: "
               "**not flat** on this run")
    resettable = all(r["rss_resettable"] for r in rows)
    return "\n".join([
        "## Sliding-window prediction: memory and speed as the image grows", "",
        f"Produced by `{command}` on {describe_machine()}. Model: random-init `{args.backbone}` + FPN "
        f"({args.decoder_channels} decoder channels) package with "
        f"`input_mode: tile`, tile {args.tile} px, overlap {args.overlap}, {args.tile_batch} tiles per forward pass, "
        f"{args.threads} torch thread{'s' if args.threads != 1 else ''}, PyTorch backend; one random RGB image per "
        "size, predicted end to end (`Predictor.predict`: tiles, blending, thresholds), each size in a fresh "
        "process. Peak RSS is above the process's memory after loading the model and the image"
        + ("" if resettable else " (peak counter not resettable here: a lower bound)")
        + "; full-size arrays are numpy's peak (tracemalloc): stitched probabilities, weights and decisions at the "
        "image's size plus one batch of tiles; the rest is peak RSS minus that — the network's memory for one "
        "batch of tiles.", "",
        markdown_table(["image (W × H)", "megapixels", "tiles", "images/s", "tiles/s", "peak RSS (MiB)",
                        "full-size arrays (MiB)", "rest (MiB)"], table), "",
        f"{verdict}; the full-size arrays grow with the pixels at {min(per_pixel):.0f}–{max(per_pixel):.0f} bytes "
        "per pixel (the result itself is full resolution), never with the number of tiles held at once. "
        f"Speed: {min(r['tiles_per_s'] for r in rows):.1f}–{max(r['tiles_per_s'] for r in rows):.1f} tiles/s on "
        "this machine (the network dominates, so time grows with the tile count; a shared CPU makes the rate noisy).",
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m defect_pipeline.benchmarks tiling")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), help="image sizes as WIDTHxHEIGHT")
    parser.add_argument("--backbone", default="convnext_atto")
    parser.add_argument("--decoder-channels", type=int, default=32)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--tile-batch", type=int, default=8, help="tiles per forward pass")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--timed-tiles", type=int, default=48,
                        help="tiles timed per size after the measured pass (small images are repeated)")
    parser.add_argument("--doc", default="docs/benchmarks.md")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: package folder, measure one size
    parser.add_argument("--repeats", type=int, default=0, help=argparse.SUPPRESS)  # internal: timed predictions
    args = parser.parse_args(argv)
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes]
    if args.worker:
        (width, height), = sizes
        row = worker(args.worker, width, height, overlap=args.overlap, tile_batch=args.tile_batch,
                     repeats=args.repeats, threads=args.threads)
        print(json.dumps(row))
        return
    from defect_pipeline.ml.tiling import TileGrid

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        package = build_package(Path(scratch) / "model", backbone=args.backbone, tile=args.tile,
                                decoder_channels=args.decoder_channels)
        for width, height in sizes:
            repeats = _repeats(len(TileGrid.cover(height, width, args.tile, args.overlap)), args.timed_tiles)
            cmd = [sys.executable, "-m", "defect_pipeline.benchmarks.tiling", "--worker", str(package),
                   "--sizes", f"{width}x{height}", "--tile", str(args.tile), "--overlap", str(args.overlap),
                   "--tile-batch", str(args.tile_batch), "--threads", str(args.threads),
                   "--repeats", str(repeats)]
            done = subprocess.run(cmd, check=True, capture_output=True, text=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"{width}x{height}: {rows[-1]}", file=sys.stderr)
    command = "python -m defect_pipeline.benchmarks tiling" + (f" {' '.join(argv)}" if argv else "")
    body = render(rows, args, command)
    write_section(Path(args.doc), "tiling", body)
    print(body)


if __name__ == "__main__":
    main()
