"""Batch inference spread over several processes (GPUs, or CPU processes), merged into one table in input order.

:func:`predict_files_sharded` gives each process of a Lightning Fabric group (the launcher training
uses, :func:`defect_pipeline.ml.distributed.launch`) every ``world_size``-th file of the listing
(:func:`shard_positions`); each process moves its copy of the predictor to its own device
(:meth:`~defect_pipeline.ml.predict.Predictor.on`) and predicts its files as one process would
(:func:`~defect_pipeline.ml.inference.predict_rows`). The files to predict are dealt out in whole batches
(:func:`shard_positions`): a network's output for an image can differ in the last bits with the other
images of its batch, and the batches are the ones a single process forms. Rank 0 gathers the rows and masks and puts the
rows back in the order of the listing (:func:`merge_shards`), so the table is the one a single process
writes: same rows, same order, same values. One process: no launcher, the plain
:func:`~defect_pipeline.ml.inference.predict_files`.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from typing import Any

import pandas as pd
import torch

from defect_pipeline.ml.distributed import Processes, TrainerSettings, launch
from defect_pipeline.ml.inference import InferenceResult, as_frame, predict_files, predict_rows

logger = logging.getLogger(__name__)

Shard = tuple[list[int], list[dict[str, Any]], dict[str, bytes], int]  # positions, rows, masks, images predicted


def shard_positions(pending: list[bool], rank: int, world_size: int, batch_size: int) -> list[int]:
    """The positions (0-based, into the listing) that process ``rank`` of ``world_size`` handles.

    ``pending``: per listed file, whether it is to be predicted. Those are dealt out in runs of ``batch_size``
    (the batches of :func:`~defect_pipeline.ml.inference.stream_predictions`), run ``k`` to rank
    ``k % world_size``; the others (skipped, broken links) pass through rank 0.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not one of {world_size} processes")
    if batch_size < 1:
        raise ValueError(f"inference.batch_size must be >= 1, got {batch_size}")
    ordinals = itertools.accumulate(pending)  # 1-based ordinal of each pending file
    return [position for position, (wanted, ordinal) in enumerate(zip(pending, ordinals, strict=True))
            if (((ordinal - 1) // batch_size) % world_size if wanted else 0) == rank]


def merge_shards(shards: list[Shard], count: int) -> tuple[list[dict[str, Any]], dict[str, bytes], int]:
    """Every shard's rows back in listing order, all masks, the images predicted in all.

    Raises:
        ValueError: the shards do not cover positions ``0 .. count-1`` exactly once (a process lost rows).
    """
    by_position: dict[int, dict[str, Any]] = {}
    masks: dict[str, bytes] = {}
    predicted = 0
    for positions, rows, shard_masks, shard_predicted in shards:
        if len(positions) != len(rows):
            raise ValueError(f"a shard returned {len(rows)} rows for {len(positions)} files")
        by_position.update(zip(positions, rows, strict=True))
        masks.update(shard_masks)
        predicted += shard_predicted
    if sorted(by_position) != list(range(count)) or sum(len(s[0]) for s in shards) != count:
        raise ValueError("the inference processes' rows do not cover the listing exactly once")
    return [by_position[p] for p in range(count)], masks, predicted


def _gather(processes: Processes, shard: Shard) -> list[Shard] | None:
    """Every rank's shard on rank 0 (None elsewhere)."""
    if processes.world_size == 1:
        return [shard]
    import torch.distributed as dist

    gathered: list[Any] | None = [None] * processes.world_size if processes.is_main else None
    dist.gather_object(shard, gathered, dst=0)
    return gathered


def predict_shard(processes: Processes, files: pd.DataFrame, predictor: Any, precision: str, batch_size: int,
                  num_workers: int, cpu_threads: int | None) -> list[Shard] | None:
    """What each process runs: its shard of ``files`` on its own device in ``precision``; rank 0 returns every
    shard."""
    if processes.device.type == "cpu":  # share the cores instead of every process using all of them
        torch.set_num_threads(cpu_threads or max(1, (os.cpu_count() or 1) // processes.world_size))
    positions = shard_positions((files["status"] == "pending").tolist(), processes.rank, processes.world_size,
                                batch_size)
    local = predictor.on(str(processes.device), precision)
    rows, masks, predicted = predict_rows(files.iloc[positions].reset_index(drop=True), local,
                                          batch_size=batch_size, num_workers=num_workers)
    return _gather(processes, (positions, rows, masks, predicted))


def predict_files_sharded(files: pd.DataFrame, predictor: Any, *, settings: TrainerSettings, batch_size: int = 16,
                          num_workers: int = 0, cpu_threads: int | None = None) -> InferenceResult:
    """:func:`~defect_pipeline.ml.inference.predict_files` over ``settings.devices`` processes on this node.

    ``predictor``: a :class:`~defect_pipeline.ml.predict.Predictor` or ensemble (each process rebuilds it on
    its device in ``settings.precision``; build it on the CPU); ``cpu_threads``: torch threads per CPU process
    (None: the cores shared evenly).
    """
    if settings.world_size == 1:
        local = predictor.on("cuda" if settings.accelerator == "cuda" else "cpu", settings.precision)
        return predict_files(files, local, batch_size=batch_size, num_workers=num_workers)
    if settings.num_nodes != 1:
        raise ValueError("sharded inference runs on one node: set inference.devices for the processes of this "
                         "machine (trainer.num_nodes applies to training only)")
    started = time.perf_counter()
    logger.info("inference: %d files over %d %s processes", len(files), settings.world_size, settings.accelerator)
    shards = launch(settings, predict_shard, files.reset_index(drop=True), predictor, settings.precision,
                    batch_size, num_workers, cpu_threads)
    rows, masks, predicted = merge_shards(shards, len(files))
    seconds = time.perf_counter() - started
    return InferenceResult(as_frame(rows), masks, seconds, predicted / seconds if seconds > 0 else 0.0)
