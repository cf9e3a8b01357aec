"""What every training process runs: build its shard's data loaders, then :func:`train`.

A :class:`TrainingJob` is everything one stage's training needs, picklable, so that
:func:`defect_pipeline.ml.distributed.launch` can hand it to each worker process;
:func:`run_training_job` is the function each process calls with its rank.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from defect_pipeline.ml.checkpoint import CheckpointStore
from defect_pipeline.ml.dataset import create_dataloader
from defect_pipeline.ml.distributed import Processes
from defect_pipeline.ml.engine.interface import EngineConfig, TrainingLogger, TrainResult
from defect_pipeline.ml.engine.loop import train
from defect_pipeline.ml.metrics import MultitaskMetrics
from defect_pipeline.ml.sampling import BalancedSampler


@dataclass
class TrainingJob:
    """Everything one stage's training needs, picklable so that worker processes can receive it."""

    model: nn.Module
    loss_fn: nn.Module
    train_set: Any  # a map-style dataset of image/mask/label samples
    val_set: Any
    metrics: MultitaskMetrics
    config: EngineConfig
    store: CheckpointStore
    meta: dict[str, Any]
    batch_size: int  # per process
    num_workers: int = 0
    training_logger: TrainingLogger | None = None
    cpu_threads: int | None = None
    sample_weights: list[float] | None = None  # per training sample: class-balanced sampling (None: shuffle)


def run_training_job(processes: Processes, job: TrainingJob) -> TrainResult:
    """Build this rank's data loaders (a shard of the data per rank, or a class-balanced draw when the job
    has ``sample_weights``) and :func:`train`.

    The function :func:`defect_pipeline.ml.distributed.launch` runs on every process.
    """
    if job.cpu_threads is not None:
        torch.set_num_threads(job.cpu_threads)
    config = job.config
    if processes.world_size > 1:
        config = dataclasses.replace(config, device=str(processes.device))
    per_rank = math.ceil(len(job.train_set) / processes.world_size)
    sampler = (processes.train_sampler(job.train_set, config.seed) if job.sample_weights is None else
               BalancedSampler(job.sample_weights, seed=config.seed, rank=processes.rank,
                               world_size=processes.world_size))
    train_loader = create_dataloader(job.train_set, batch_size=job.batch_size, shuffle=True,
                                     num_workers=job.num_workers, seed=config.seed, drop_last=per_rank > job.batch_size,
                                     sampler=sampler)
    val_loader = create_dataloader(job.val_set, batch_size=job.batch_size, shuffle=False, num_workers=job.num_workers,
                                   seed=config.seed, sampler=processes.eval_sampler(job.val_set))
    return train(job.model, job.loss_fn, train_loader, val_loader, metrics=job.metrics, config=config,
                 store=job.store, meta=job.meta, training_logger=job.training_logger if processes.is_main else None,
                 processes=processes)
