"""The training engine: one readable loop, resumable, with every knob of a stage.

:func:`~defect_pipeline.ml.engine.loop.train` reads top to bottom: build the optimizer and
schedule, resume from ``last`` when there is one, then per epoch ``train_epoch`` → ``validate`` →
``end_epoch``. Per optimizer step the loop goes through labelled phases — set dropout → forward
(autocast) → check the loss is finite → backward (accumulate) → clip → step + LR schedule — and
per validation (once per epoch, or every ``val_every_n_steps`` optimizer steps): validate →
early-stopping bookkeeping → checkpoint (``best`` when the monitored metric improved, ``last``
always) → log. A stage lasts ``epochs`` epochs or ``max_steps`` optimizer steps. Modules:

- ``interface``: what a caller hands in and gets back (:class:`EngineConfig`, :class:`TrainResult`,
  :class:`TrainingLogger`, :class:`NullLogger`, :class:`NonFiniteLossError`);
- ``loop``: :func:`train`, ``train_epoch``, ``record_validation`` (per epoch, or every
  ``val_every_n_steps`` steps), ``end_epoch``, step checkpoints (``checkpoint_every_n_steps``);
- ``start``: :func:`build_optimizer` and the trainables; the state a stage starts from (fresh,
  its ``last.pt`` resumed — a copied ``step_<N>.pt`` included —, or already finished);
- ``setup``: ``TrainingSetup``, what stays fixed while a stage trains (its length aside, with a time budget);
- ``budget``: ``epochs: auto`` — the step timer and the estimate of how many steps fill ``time_budget_s``;
- ``ema``: the EMA of the weights (timm's ``ModelEmaV3``) that validation, checkpoints and packages use;
- ``validation``: :func:`validate`, the validation pass;
- ``state``: ``TrainState``, everything the loop changes, and its checkpoint round trip;
- ``stop_signal``: Ctrl-C / SIGTERM handling (stop at the next optimizer step, saving ``last``);
- ``job``: :class:`TrainingJob` / :func:`run_training_job`, what each training process runs.

Side effects go through the injected :class:`TrainingLogger` and a
:class:`~defect_pipeline.ml.checkpoint.CheckpointStore`, so the engine is testable with a no-op
logger and a temp folder. Resuming from ``last`` restores model, optimizer, scheduler, scaler, RNG
states and history; the data order and augmentations of epoch ``e`` are seeded from ``seed + e``,
so an interrupted run continues exactly as an uninterrupted one would (on CPU). The loop runs in
one process or as one rank of several (:mod:`defect_pipeline.ml.distributed`): each rank trains
on its shard through DistributedDataParallel, validation figures are summed over the ranks, and
only rank 0 writes checkpoints and logs.
"""

from defect_pipeline.ml.engine.interface import (
    EngineConfig,
    NonFiniteLossError,
    NullLogger,
    TrainingLogger,
    TrainResult,
)
from defect_pipeline.ml.engine.job import TrainingJob, run_training_job
from defect_pipeline.ml.engine.loop import train
from defect_pipeline.ml.engine.start import build_optimizer
from defect_pipeline.ml.engine.validation import validate

__all__ = [
    "EngineConfig",
    "NonFiniteLossError",
    "NullLogger",
    "TrainResult",
    "TrainingJob",
    "TrainingLogger",
    "build_optimizer",
    "run_training_job",
    "train",
    "validate",
]
