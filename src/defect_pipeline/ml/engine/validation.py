"""The validation pass: loss and metrics of a model over a loader, summed over the processes.

Deterministic (no augmentation, fixed order, no gradient): the engine runs it after every
epoch. :func:`limit_batches` caps a loader at a number of batches (training and validation).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from defect_pipeline.ml.batch import Batch
from defect_pipeline.ml.device import autocast
from defect_pipeline.ml.distributed import Processes, SingleProcess
from defect_pipeline.ml.metrics import MultitaskMetrics


def limit_batches(loader: Iterable[Any], limit: int | None) -> Iterator[tuple[int, Any]]:
    """``(index, batch)`` pairs of ``loader``, at most ``limit`` of them (None: all)."""
    for index, batch in enumerate(loader):
        if limit is not None and index >= limit:
            return
        yield index, batch


@torch.no_grad()
def validate(model: nn.Module, loss_fn: nn.Module, loader, metrics: MultitaskMetrics, *, device: str,
             precision: str, step: int, total_steps: int, limit: int | None = None,
             processes: Processes | None = None) -> dict[str, float]:
    """Validation loss and metrics over the loader (deterministic: no augmentation, fixed order),
    and the evaluation throughput ``val_samples_per_s``.

    With several ``processes`` each evaluates its shard and the loss sums, sample counts and
    confusion matrices are summed over the ranks: every rank returns the whole set's figures.
    ``model`` must then be the unwrapped module (no collective in its forward).
    """
    processes = processes or SingleProcess(device)
    model.eval()
    metrics.reset()
    total, count, started = 0.0, 0, time.perf_counter()
    for _, loaded in limit_batches(loader, limit):
        batch = Batch.from_dict(loaded).to(device)
        with autocast(device, precision):
            out = model(batch.image)
            loss = loss_fn(out.seg_logits.float(), out.cls_logits.float(), batch.mask, batch.label, step=step,
                           total_steps=total_steps)
        total += float(loss.total.detach()) * len(batch)
        count += len(batch)
        metrics.update(out.seg_logits.float(), out.cls_logits.float(), batch.mask, batch.label)
    total, count = (float(v) for v in processes.sum(torch.tensor([total, float(count)], dtype=torch.float64)))
    result = {"val_loss": total / max(count, 1)}
    reduce = processes.sum if processes.world_size > 1 else None
    result.update({f"val_{k}": float(v) for k, v in metrics.compute(reduce=reduce).items()})
    result["val_samples_per_s"] = count / max(time.perf_counter() - started, 1e-9)
    return result
