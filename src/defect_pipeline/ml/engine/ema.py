"""Exponential moving average (EMA) of a model's weights: what a stage validates, checkpoints and packages.

:class:`WeightAverage` is timm's :class:`~timm.utils.ModelEmaV3` (a copy of the model whose parameters
and buffers — BatchNorm running statistics included — move towards the trained model's after every
optimizer step, with foreach ``lerp_``) with the decay schedule of :func:`ema_decay_at_step`: the
averaging window ``1 / (1 - decay)`` grows linearly from one step (at step 0 the average is the model)
to its full length over ``warmup_steps`` optimizer steps, so the early, random-looking weights do not
dominate the average of a short run. :func:`default_warmup_steps` is the warmup when none is set: ten
times the window, so the average spans at most about the last tenth of the steps taken (the rule of
TensorFlow's ``ExponentialMovingAverage(num_updates=...)``).
"""

from __future__ import annotations

from timm.utils import ModelEmaV3
from torch import nn


def ema_decay_at_step(step: int, *, decay: float, warmup_steps: int) -> float:
    """The decay of the EMA update after optimizer step ``step`` (steps taken, this one included).

    The averaging window ``w = 1 / (1 - decay)`` (in steps) grows linearly from 1 at step 0 to ``w`` at
    ``warmup_steps``; the decay is ``1 - 1 / window``: 0 at step 0 (the average is the model),
    ``decay`` from ``warmup_steps`` on (at once with ``warmup_steps = 0``).
    """
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
    if warmup_steps < 0:
        raise ValueError(f"EMA warmup_steps must be >= 0, got {warmup_steps}")
    step = max(int(step), 0)
    if step >= warmup_steps:
        return float(decay)
    window = 1.0 + (1.0 / (1.0 - decay) - 1.0) * step / warmup_steps
    return 1.0 - 1.0 / window


def default_warmup_steps(decay: float) -> int:
    """Ten averaging windows (``10 / (1 - decay)`` steps): the warmup of :func:`ema_decay_at_step` when
    none is configured (0.999 → 10 000 steps)."""
    return round(10.0 / (1.0 - decay))


class WeightAverage(ModelEmaV3):
    """timm's ModelEmaV3 whose decay follows :func:`ema_decay_at_step`; :attr:`module` is the averaged copy.

    Call :meth:`update` (``update(model, step=global_step)``) after every optimizer step.
    """

    def __init__(self, model: nn.Module, *, decay: float, warmup_steps: int) -> None:
        ema_decay_at_step(0, decay=decay, warmup_steps=warmup_steps)  # checks both
        super().__init__(model, decay=decay, foreach=True)
        self.warmup_steps = warmup_steps

    def get_decay(self, step: int | None = None) -> float:
        return self.decay if step is None else ema_decay_at_step(step, decay=self.decay,
                                                                  warmup_steps=self.warmup_steps)
