"""Node of the ``advise`` pipeline (the rules are in :mod:`defect_pipeline.ml.advice`)."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from defect_pipeline.config import ModelParams, StageParams, TrainerParams
from defect_pipeline.ml.advice import machine_advice, render_advice_markdown
from defect_pipeline.ml.distributed import resolve_trainer

logger = logging.getLogger(__name__)


def recipe_advice(manifest: pd.DataFrame, trainer: TrainerParams, model: ModelParams, stage1: StageParams,
                  stage2: StageParams, stage3: StageParams) -> tuple[dict[str, Any], str]:
    """``advice.json`` and ``advice.md``: recommendations next to the current configuration."""
    settings = resolve_trainer(**trainer.model_dump())
    advice = machine_advice(manifest, device=settings.accelerator, precision=settings.precision)
    stages = (stage1, stage2, stage3)
    current = {"backbone": model.backbone, "image_size": model.image_size,
               "batch": f"{stage2.batch_size} × {stage2.accumulate_grad_batches}",
               "epochs": "/".join(str(s.epochs) for s in stages), "class_weights": str(stage2.loss.class_weights)}
    advice["current"] = current
    for name, reason in advice["reasons"].items():
        logger.info("advice on %s: %s", name, reason)
    return advice, render_advice_markdown(advice, current)
