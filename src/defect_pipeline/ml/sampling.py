"""Class-balanced sampling of training images (``stageN.sampler: balanced``).

:class:`BalancedSampler` draws, with replacement, as many samples per epoch as the rank's share of
the training set, each with probability proportional to its weight
(:func:`defect_pipeline.ml.plan.sampling_weights`: ``1 / sqrt(class count)``). The draw of epoch
``e`` on rank ``r`` depends on ``(seed, e, r)`` only — the engine calls :meth:`set_epoch` at each
epoch start —, so a resumed stage draws the same images as an uninterrupted one, and each of
several training processes draws its own share.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

RANK_STRIDE = 1_000_003  # separates the ranks' random streams


class BalancedSampler(Sampler[int]):
    """Weighted sampling with replacement, seeded by ``(seed, epoch, rank)`` (see the module docstring)."""

    def __init__(self, weights: Sequence[float], *, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if len(weights) == 0:
            raise ValueError("balanced sampling needs at least one training sample")
        if any(not math.isfinite(w) or w < 0 for w in weights) or not any(w > 0 for w in weights):
            raise ValueError("sampling weights must be finite, non-negative and not all zero")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not within world_size {world_size}")
        self.weights = torch.as_tensor(list(weights), dtype=torch.float64)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.num_samples = math.ceil(len(weights) / world_size)  # every rank takes the same number of steps
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch + self.rank * RANK_STRIDE)
        drawn = torch.multinomial(self.weights, self.num_samples, replacement=True, generator=generator)
        return iter(drawn.tolist())
