"""Step schedules: learning rate, multitask loss weights and dropout, as pure functions of the step.

Conventions shared by every function here:

* ``step`` counts optimizer steps already taken, starting at 0: the value a function returns for
  ``step = k`` is the one used by the ``k``-th optimizer update (0-based).
* Schedules are clamped: a step past the end of a schedule returns its final value, a negative
  step is treated as 0.

Every learning-rate schedule (:data:`SCHEDULERS`) starts with the same *linear warmup*
(``0 <= step < warmup_steps``: linear from ``warmup_lr`` at step 0 towards ``base_lr``); after it,
``t = step - warmup_steps`` counts the steps since the warmup ended and the shape is one of:

* ``cosine`` (the default): cosine from ``base_lr`` (``t = 0``) down to ``eta_min`` (at
  ``step = total_steps``), ``eta_min`` afterwards;
* ``cosine_restarts`` (SGDR, Loshchilov & Hutter 2017): cosine cycles from ``base_lr`` down to
  ``eta_min``, the first ``restart_steps`` long, each next one ``restart_mult`` times longer; a
  cycle ends where the next begins at ``base_lr`` again (at ``step = total_steps``, where no
  update follows, a cycle that ends there gives ``eta_min``, not a restart);
* ``step``: ``base_lr * step_gamma ** (t // step_size)`` (decay by ``step_gamma`` every
  ``step_size`` steps; ``eta_min`` does not apply);
* ``constant``: ``base_lr`` (``eta_min`` does not apply).

:func:`create_scheduler` applies a shape to every parameter group of an optimizer *relative to
the group's own initial learning rate* (a backbone group at 1e-4 and a head group at 1e-3 keep
their 1:10 ratio at every step), through :class:`torch.optim.lr_scheduler.LambdaLR`.
"""

from __future__ import annotations

import functools
import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

SCHEDULERS = ("cosine", "cosine_restarts", "step", "constant")  # the learning-rate shapes after the warmup


def _check_steps(total_steps: int, warmup_steps: int) -> None:
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}")


def _check_shape(scheduler: str, restart_steps: int | None, restart_mult: float, step_size: int | None,
                 step_gamma: float) -> None:
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)}; got {scheduler!r}")
    if scheduler == "cosine_restarts":
        if restart_steps is None or restart_steps < 1:
            raise ValueError(f"cosine_restarts needs restart_steps >= 1 (the first cycle's length), got {restart_steps}")
        if restart_mult < 1.0:
            raise ValueError(f"restart_mult must be >= 1 (each cycle as long as the last or longer), got {restart_mult}")
    if scheduler == "step":
        if step_size is None or step_size < 1:
            raise ValueError(f"the step scheduler needs step_size >= 1 (steps between decays), got {step_size}")
        if not 0.0 < step_gamma < 1.0:
            raise ValueError(f"step_gamma must be in (0, 1) (the factor applied at each decay), got {step_gamma}")


def _cosine(progress: float, high: float, low: float) -> float:
    """Half a cosine from ``high`` (``progress = 0``) to ``low`` (``progress >= 1``)."""
    return low + (high - low) * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def restart_cycle(t: float, *, restart_steps: int, restart_mult: float = 1.0) -> tuple[int, float, float]:
    """Where step ``t`` (counted from the end of the warmup) falls among the cosine cycles.

    The first cycle is ``restart_steps`` long, cycle ``i`` is ``restart_steps * restart_mult ** i``
    long. Returns ``(i, start, length)``: the cycle's index, its first step and its length.
    """
    t = max(float(t), 0.0)
    if restart_mult == 1.0:
        index = int(t // restart_steps)
        return index, float(index * restart_steps), float(restart_steps)
    # cycles start at restart_steps * (mult**i - 1) / (mult - 1): invert, then correct float round-off
    def start(i: int) -> float:
        return restart_steps * (restart_mult ** i - 1.0) / (restart_mult - 1.0)

    index = max(int(math.log(1.0 + t * (restart_mult - 1.0) / restart_steps, restart_mult)), 0)
    while index > 0 and start(index) > t:
        index -= 1
    while start(index + 1) <= t:
        index += 1
    return index, start(index), restart_steps * restart_mult ** index


def lr_at_step(step: int, *, base_lr: float, total_steps: int, warmup_steps: int = 0,
               warmup_lr: float = 0.0, eta_min: float = 0.0, scheduler: str = "cosine",
               restart_steps: int | None = None, restart_mult: float = 1.0, step_size: int | None = None,
               step_gamma: float = 0.1) -> float:
    """Learning rate at ``step``: linear warmup ``warmup_lr -> base_lr``, then the ``scheduler``'s shape.

    Args:
        step: optimizer steps already taken (0-based index of the coming update).
        base_lr: peak learning rate, reached at ``step = warmup_steps``.
        total_steps: the schedule's length (the value at ``total_steps`` holds afterwards).
        warmup_steps: length of the linear warmup; 0 starts the shape at ``base_lr`` directly.
        warmup_lr: learning rate at step 0 when ``warmup_steps > 0``.
        eta_min: lowest learning rate of ``cosine`` and ``cosine_restarts``.
        scheduler: one of :data:`SCHEDULERS` (see the module docstring for each shape).
        restart_steps, restart_mult: ``cosine_restarts``: the first cycle's length in steps and the
            factor by which each next cycle is longer.
        step_size, step_gamma: ``step``: steps between decays and the factor applied at each.

    Returns:
        The learning rate (a float). ``lr_at_step(0) == warmup_lr`` (or ``base_lr`` without warmup),
        ``lr_at_step(warmup_steps) == base_lr`` (``cosine``: unless ``warmup_steps == total_steps``,
        where the schedule is over and ``eta_min`` is returned), and for ``cosine``
        ``lr_at_step(total_steps) == eta_min``.
    """
    _check_steps(total_steps, warmup_steps)
    _check_shape(scheduler, restart_steps, restart_mult, step_size, step_gamma)
    step = max(int(step), 0)
    if step < warmup_steps:
        return warmup_lr + (base_lr - warmup_lr) * step / warmup_steps
    t = min(step, total_steps) - warmup_steps  # steps since the warmup ended
    if scheduler == "cosine":
        cosine_steps = total_steps - warmup_steps
        return _cosine(1.0 if cosine_steps == 0 else t / cosine_steps, base_lr, eta_min)
    if scheduler == "cosine_restarts":
        index, start, length = restart_cycle(t, restart_steps=restart_steps, restart_mult=restart_mult)
        if index > 0 and t == start == total_steps - warmup_steps:  # the run ends where a cycle would restart:
            return float(eta_min)  # its final value is the end of the last cycle, not a restart nobody uses
        return _cosine((t - start) / length, base_lr, eta_min)
    if scheduler == "step":
        return base_lr * step_gamma ** (t // step_size)
    return float(base_lr)  # constant


def lr_multiplier(step: int, *, total_steps: int, warmup_steps: int = 0, warmup_lr_ratio: float = 0.0,
                  eta_min_ratio: float = 0.0, scheduler: str = "cosine", restart_steps: int | None = None,
                  restart_mult: float = 1.0, step_size: int | None = None, step_gamma: float = 0.1) -> float:
    """The schedule of :func:`lr_at_step` as a factor of the base learning rate (``base_lr = 1``).

    ``warmup_lr_ratio`` and ``eta_min_ratio`` are the start-of-warmup and lowest learning rates as
    fractions of the base learning rate; the other arguments are :func:`lr_at_step`'s.
    """
    return lr_at_step(step, base_lr=1.0, total_steps=total_steps, warmup_steps=warmup_steps,
                      warmup_lr=warmup_lr_ratio, eta_min=eta_min_ratio, scheduler=scheduler,
                      restart_steps=restart_steps, restart_mult=restart_mult, step_size=step_size,
                      step_gamma=step_gamma)


def create_scheduler(optimizer: Optimizer, *, total_steps: int, warmup_steps: int = 0,
                     warmup_lr_ratio: float = 0.0, eta_min_ratio: float = 0.0, scheduler: str = "cosine",
                     restart_steps: int | None = None, restart_mult: float = 1.0, step_size: int | None = None,
                     step_gamma: float = 0.1) -> LambdaLR:
    """A per-step :class:`~torch.optim.lr_scheduler.LambdaLR` with the warmup + ``scheduler`` shape.

    Every parameter group ``g`` gets ``lr = g["initial_lr"] * lr_multiplier(step, ...)``, where
    ``initial_lr`` is the group's ``lr`` when the scheduler is created (LambdaLR records it). Groups
    with different base learning rates (backbone vs head) therefore follow the same shape and keep
    their ratio; ``warmup_lr_ratio`` and ``eta_min_ratio`` are relative to each group's base.

    Creating the scheduler sets the learning rates for step 0. Call ``scheduler.step()`` once after
    every ``optimizer.step()`` (per batch, not per epoch): the ``k``-th update (0-based) then uses
    ``lr_multiplier(k)``. The multiplier is a :func:`functools.partial`, so ``state_dict()`` /
    ``load_state_dict()`` resume the schedule (its shape comes from the arguments, not the state).
    """
    _check_steps(total_steps, warmup_steps)
    _check_shape(scheduler, restart_steps, restart_mult, step_size, step_gamma)
    multiplier = functools.partial(lr_multiplier, total_steps=total_steps, warmup_steps=warmup_steps,
                                   warmup_lr_ratio=warmup_lr_ratio, eta_min_ratio=eta_min_ratio,
                                   scheduler=scheduler, restart_steps=restart_steps, restart_mult=restart_mult,
                                   step_size=step_size, step_gamma=step_gamma)
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
