"""The ``tiling`` benchmark section: its verdict follows the measured rows, and it names the machine."""

from __future__ import annotations

import argparse

from defect_pipeline.benchmarks import describe_machine
from defect_pipeline.benchmarks.tiling import _repeats, render

ARGS = argparse.Namespace(backbone="convnext_atto", decoder_channels=32, tile=256, overlap=0.25, tile_batch=8,
                          threads=2)


def _row(width: int, height: int, tiles: int, numpy_mib: float, rest_mib: float) -> dict:
    return {"width": width, "height": height, "tiles": tiles, "images_per_s": 10.0 / tiles, "tiles_per_s": 10.0,
            "peak_rss_mib": numpy_mib + rest_mib, "numpy_peak_mib": numpy_mib, "rest_mib": rest_mib,
            "rss_resettable": True}


def test_the_verdict_says_flat_only_when_the_non_full_size_memory_is() -> None:
    flat = render([_row(512, 512, 9, 9, 80), _row(4096, 3072, 336, 444, 110)], ARGS, "cmd")
    growing = render([_row(512, 512, 9, 9, 80), _row(4096, 3072, 336, 444, 900)], ARGS, "cmd")
    assert "stays within 80–110 MiB from 512 × 512 to 4096 × 3072 (336 tiles): **flat**" in flat
    assert "**not flat**" in growing and "**flat**" not in growing
    assert f"Produced by `cmd` on {describe_machine()}." in flat
    assert "| 4096 × 3072 | 12.58 | 336 | 0.03 | 10.0 | 554 | 444 | 110 |" in flat


def test_small_images_are_repeated_and_large_ones_timed_once() -> None:
    assert _repeats(9, 48) == 5 and _repeats(25, 48) == 2 and _repeats(121, 48) == 0 and _repeats(48, 48) == 0
