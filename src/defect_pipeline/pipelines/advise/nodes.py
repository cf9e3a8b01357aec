"""Node of the ``advise`` pipeline (the rules are in :mod:`defect_pipeline.ml.advice`)."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from defect_pipeline.config import ModelParams, StageParams, TrainerParams
from defect_pipeline.ml.advice import advise, dataset_facts, render_advice_markdown
from defect_pipeline.ml.distributed import free_memory_bytes, resolve_trainer

logger = logging.getLogger(__name__)


def machine_advice(manifest: pd.DataFrame, trainer: dict[str, Any]) -> dict[str, Any]:
    """The advice for this manifest on the device the trainer block resolves to (its free memory)."""
    settings = resolve_trainer(**TrainerParams.model_validate(trainer).model_dump())
    return advise(dataset_facts(manifest), device=settings.accelerator,
                  free_memory_bytes=free_memory_bytes(settings.accelerator), precision=settings.precision)


def recipe_advice(manifest: pd.DataFrame, trainer: dict[str, Any], model: dict[str, Any], stage1: dict[str, Any],
                  stage2: dict[str, Any], stage3: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """``advice.json`` and ``advice.md``: recommendations next to the current configuration."""
    advice = machine_advice(manifest, trainer)
    model_cfg = ModelParams.model_validate(model)
    stages = [StageParams.model_validate(s) for s in (stage1, stage2, stage3)]
    current = {"backbone": model_cfg.backbone, "image_size": model_cfg.image_size,
               "batch": f"{stages[1].batch_size} × {stages[1].accumulate_grad_batches}",
               "epochs": "/".join(str(s.epochs) for s in stages), "class_weights": str(stages[1].loss.class_weights)}
    advice["current"] = current
    for name, reason in advice["reasons"].items():
        logger.info("advice on %s: %s", name, reason)
    return advice, render_advice_markdown(advice, current)
