"""A stage as long as its time budget (``epochs: auto`` with ``time_budget_s``): how many steps fit.

With a fixed number of epochs, ``time_budget_s`` only stops the stage after the validation that
passes it, so a cosine schedule sized by the epochs is cut wherever the budget ran out. Here the
budget *is* the stage's length: :class:`BudgetSchedule` times the optimizer steps (the first
:data:`SKIP_STEPS` of a process left out: allocator warm-up, lazy initialisation; validations left
out: they are counted apart), and after :data:`MEASURE_STEPS` timed steps — or fewer, once they took
:data:`MEASURE_SHARE` of the budget — :func:`estimate_total_steps` turns the time left into the
stage's total steps; the engine then sizes the LR and loss-weight schedules to it and ends the stage
there. Before a validation was timed, one is guessed from the step time (:func:`guess_validation_seconds`).

After every validation that follows an estimate, the stage is estimated again from the time really
left, the step time of the steps since the previous estimate and the mean of the last
:data:`RECENT_VALIDATIONS` validations: a machine that slows down (or speeds up) mid-stage moves the
end (and the schedules' end) with it, so the stage ends near its budget instead of running the steps
the first minutes promised (measured: a 3000 s NEU-Seg stage took 3570 s when the steps slowed by up
to 50 % after a single early estimate).

The estimates are records (``at_step``, ``total_steps``, ``step_seconds``, ``validation_seconds``,
``validation_measured``, ``elapsed_s``, ``budget_s``) kept in the training state, its checkpoints and
the stage's summary; a resumed stage keeps the length its checkpoint recorded (the budget time of the
interrupted run is not known to it) and estimates no more.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

SKIP_STEPS = 3  # steps of a process not timed: the first ones are slow for reasons that do not last
MEASURE_STEPS = 20  # timed steps before the first estimate ...
MEASURE_SHARE = 0.05  # ... or fewer, once the timed steps took this share of the budget
VALIDATION_BATCH_SHARE = 1 / 3  # first guess: a validation batch (forward only) costs a third of a training batch
PROVISIONAL_STEPS = 10**9  # the schedules' length until the first estimate
RECENT_VALIDATIONS = 3  # re-estimates take the mean time of this many latest validations


def estimate_total_steps(*, budget_s: float, elapsed_s: float, steps_done: int, step_seconds: float,
                         validation_seconds: float, steps_per_validation: int, min_steps: int = 1) -> int:
    """The stage's total optimizer steps for a budget of ``budget_s`` seconds.

    ``steps_done`` steps took ``elapsed_s``; each further step is expected to take ``step_seconds``,
    a validation (every ``steps_per_validation`` steps, and one after the last step) ``validation_seconds``.
    The remaining time, less the final validation, is shared among steps that cost ``step_seconds +
    validation_seconds / steps_per_validation`` each. At least ``min_steps`` and ``steps_done``.
    """
    if budget_s <= 0 or step_seconds < 0 or validation_seconds < 0 or steps_per_validation < 1:
        raise ValueError(f"estimate_total_steps needs budget_s > 0, step and validation seconds >= 0 and "
                         f"steps_per_validation >= 1 (got {budget_s}, {step_seconds}, {validation_seconds}, "
                         f"{steps_per_validation})")
    per_step = step_seconds + validation_seconds / steps_per_validation
    remaining = budget_s - elapsed_s - validation_seconds
    more = 0 if remaining <= 0 else (PROVISIONAL_STEPS if per_step <= 0 else math.floor(remaining / per_step))
    return max(steps_done + more, min_steps, steps_done)


def guess_validation_seconds(*, step_seconds: float, validation_batches: int, accumulate_grad_batches: int) -> float:
    """A validation's time before one was measured: its batches at :data:`VALIDATION_BATCH_SHARE` of a
    training batch (a step trains ``accumulate_grad_batches`` batches)."""
    return validation_batches * step_seconds / accumulate_grad_batches * VALIDATION_BATCH_SHARE


class BudgetSchedule:
    """Times the steps and validations of one process and proposes the stage's length (see the module
    docstring). ``frozen``: estimate nothing (a resumed stage keeps its length); ``clock``: seconds, monotonic."""

    def __init__(self, budget_s: float, *, steps_per_validation: int, validation_batches: int,
                 accumulate_grad_batches: int, min_steps: int, clock: Callable[[], float], started: float,
                 frozen: bool = False) -> None:
        self.budget_s, self.steps_per_validation, self.min_steps = budget_s, steps_per_validation, min_steps
        self.validation_batches, self.accumulate = validation_batches, accumulate_grad_batches
        self.clock, self.started, self.frozen = clock, started, frozen
        self.done = 0  # estimates accepted
        self.mark = started  # the clock at the end of the last step (or the start)
        self.steps_seen = 0  # steps of this process
        self.timed_steps, self.timed_seconds = 0, 0.0  # since the last estimate (all, before the first)
        self.validation_times: list[float] = []
        self.validation_since_mark = 0.0  # validation time since the mark, left out of the next step's time
        self.validated_since_estimate = False

    @property
    def due(self) -> bool:
        """Whether the engine asks for a :meth:`propose` after this step: while measuring for the first
        estimate, and once a validation followed the last one (the same on every rank)."""
        return not self.frozen and (self.done == 0 or self.validated_since_estimate)

    def validation_took(self, seconds: float) -> None:
        """A validation (with its checkpoints and logging) took ``seconds``."""
        self.validation_times.append(seconds)
        self.validation_since_mark += seconds
        self.validated_since_estimate = self.done > 0

    def step_ended(self) -> bool:
        """An optimizer step ended: time it (all but a process's first :data:`SKIP_STEPS`, validations left
        out). Whether the engine then asks for a :meth:`propose` (:attr:`due`)."""
        if self.frozen:
            return False
        now = self.clock()
        self.steps_seen += 1
        if self.steps_seen > SKIP_STEPS:
            self.timed_steps += 1
            self.timed_seconds += max(now - self.mark - self.validation_since_mark, 0.0)
        self.mark, self.validation_since_mark = now, 0.0
        return self.due

    def propose(self, step: int) -> dict[str, Any] | None:
        """After optimizer step ``step``: the record of a new estimate when one is due and possible, else None."""
        if not self.due or self.timed_steps == 0:
            return None
        now = self.mark
        if self.done == 0 and self.timed_steps < MEASURE_STEPS and self.timed_seconds < MEASURE_SHARE * self.budget_s:
            return None
        step_seconds = self.timed_seconds / self.timed_steps
        measured = bool(self.validation_times)
        recent = self.validation_times[-RECENT_VALIDATIONS:]
        validation_seconds = (sum(recent) / len(recent) if measured else
                              guess_validation_seconds(step_seconds=step_seconds,
                                                       validation_batches=self.validation_batches,
                                                       accumulate_grad_batches=self.accumulate))
        elapsed = now - self.started
        total = estimate_total_steps(budget_s=self.budget_s, elapsed_s=elapsed, steps_done=step,
                                     step_seconds=step_seconds, validation_seconds=validation_seconds,
                                     steps_per_validation=self.steps_per_validation, min_steps=self.min_steps)
        return {"at_step": step, "total_steps": total, "step_seconds": step_seconds,
                "validation_seconds": validation_seconds, "validation_measured": measured, "elapsed_s": elapsed,
                "budget_s": self.budget_s}

    def accept(self, estimate: dict[str, Any]) -> None:
        """``estimate`` (rank 0's proposal, on every rank) is the stage's length from here; the step time of
        the next estimate is measured from here on."""
        self.done += 1
        self.validated_since_estimate = False
        self.timed_steps, self.timed_seconds = 0, 0.0
