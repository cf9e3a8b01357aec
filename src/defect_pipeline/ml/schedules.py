"""Step schedules: learning rate, multitask loss weights and dropout, as pure functions of the step.

Conventions shared by every function here:

* ``step`` counts optimizer steps already taken, starting at 0: the value a function returns for
  ``step = k`` is the one used by the ``k``-th optimizer update (0-based).
* Schedules are clamped: a step past the end of a schedule returns its final value, a negative
  step is treated as 0.

The learning-rate shape is *linear warmup then cosine decay*:

* ``0 <= step < warmup_steps``: linear from ``warmup_lr`` (at step 0) towards ``base_lr``;
* ``warmup_steps <= step <= total_steps``: cosine from ``base_lr`` (at ``step = warmup_steps``)
  down to ``eta_min`` (at ``step = total_steps``);
* ``step > total_steps``: ``eta_min``.

:func:`create_scheduler` applies that shape to every parameter group of an optimizer *relative to
the group's own initial learning rate* (a backbone group at 1e-4 and a head group at 1e-3 keep
their 1:10 ratio at every step), through :class:`torch.optim.lr_scheduler.LambdaLR`.
"""

from __future__ import annotations

import functools
import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def _check_steps(total_steps: int, warmup_steps: int) -> None:
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}")


def lr_at_step(step: int, *, base_lr: float, total_steps: int, warmup_steps: int = 0,
               warmup_lr: float = 0.0, eta_min: float = 0.0) -> float:
    """Learning rate at ``step``: linear warmup ``warmup_lr -> base_lr``, then cosine to ``eta_min``.

    Args:
        step: optimizer steps already taken (0-based index of the coming update).
        base_lr: peak learning rate, reached at ``step = warmup_steps``.
        total_steps: step at which the cosine reaches ``eta_min`` (constant afterwards).
        warmup_steps: length of the linear warmup; 0 starts the cosine at ``base_lr`` directly.
        warmup_lr: learning rate at step 0 when ``warmup_steps > 0``.
        eta_min: final learning rate.

    Returns:
        The learning rate (a float). ``lr_at_step(0) == warmup_lr`` (or ``base_lr`` without warmup),
        ``lr_at_step(warmup_steps) == base_lr`` (unless ``warmup_steps == total_steps``, where the
        schedule is over and ``eta_min`` is returned), ``lr_at_step(total_steps) == eta_min``.
    """
    _check_steps(total_steps, warmup_steps)
    step = max(int(step), 0)
    if step < warmup_steps:
        return warmup_lr + (base_lr - warmup_lr) * step / warmup_steps
    cosine_steps = total_steps - warmup_steps
    progress = 1.0 if cosine_steps == 0 else min((step - warmup_steps) / cosine_steps, 1.0)
    return eta_min + (base_lr - eta_min) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_multiplier(step: int, *, total_steps: int, warmup_steps: int = 0, warmup_lr_ratio: float = 0.0,
                  eta_min_ratio: float = 0.0) -> float:
    """The schedule of :func:`lr_at_step` as a factor of the base learning rate (``base_lr = 1``).

    ``warmup_lr_ratio`` and ``eta_min_ratio`` are the start-of-warmup and final learning rates as
    fractions of the base learning rate.
    """
    return lr_at_step(step, base_lr=1.0, total_steps=total_steps, warmup_steps=warmup_steps,
                      warmup_lr=warmup_lr_ratio, eta_min=eta_min_ratio)


def create_scheduler(optimizer: Optimizer, *, total_steps: int, warmup_steps: int = 0,
                     warmup_lr_ratio: float = 0.0, eta_min_ratio: float = 0.0) -> LambdaLR:
    """A per-step :class:`~torch.optim.lr_scheduler.LambdaLR` with the warmup + cosine shape.

    Every parameter group ``g`` gets ``lr = g["initial_lr"] * lr_multiplier(step, ...)``, where
    ``initial_lr`` is the group's ``lr`` when the scheduler is created (LambdaLR records it). Groups
    with different base learning rates (backbone vs head) therefore follow the same shape and keep
    their ratio; ``warmup_lr_ratio`` and ``eta_min_ratio`` are relative to each group's base.

    Creating the scheduler sets the learning rates for step 0. Call ``scheduler.step()`` once after
    every ``optimizer.step()`` (per batch, not per epoch): the ``k``-th update (0-based) then uses
    ``lr_multiplier(k)``. The multiplier is a :func:`functools.partial`, so ``state_dict()`` /
    ``load_state_dict()`` resume the schedule.
    """
    _check_steps(total_steps, warmup_steps)
    multiplier = functools.partial(lr_multiplier, total_steps=total_steps, warmup_steps=warmup_steps,
                                   warmup_lr_ratio=warmup_lr_ratio, eta_min_ratio=eta_min_ratio)
    return LambdaLR(optimizer, lr_lambda=multiplier)


def dynamic_weight(step: int, *, total_steps: int, start: float, end: float) -> float:
    """A loss weight moving linearly from ``start`` (step 0) to ``end`` (``step >= total_steps``).

    Used for the dynamic multitask weighting: ``alpha`` (classification) goes ``alpha_start ->
    alpha_end`` and ``beta`` (segmentation) ``beta_start -> beta_end`` over training.
    ``total_steps <= 0`` returns ``end``.
    """
    if total_steps <= 0:
        return float(end)
    progress = min(max(step, 0) / total_steps, 1.0)
    return float(start + (end - start) * progress)


def dropout_at_step(step: int, *, target: float, warmup_step: int) -> float:
    """Dropout probability at ``step``: 0 before ``warmup_step``, then ``target``.

    Lets a freshly initialised head fit first and switches regularisation on afterwards
    (``warmup_step = 0`` means dropout from the start).
    """
    if not 0.0 <= target < 1.0:
        raise ValueError(f"dropout target must be in [0, 1), got {target}")
    return 0.0 if step < warmup_step else float(target)
