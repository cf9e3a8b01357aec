"""Node of the ``diagnose`` pipeline (the work is in :mod:`defect_pipeline.ml.diagnosis`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from defect_pipeline.config import STAGES, DiagnosisParams, ModelParams, StageParams
from defect_pipeline.datasets import TrainingHistory
from defect_pipeline.ml.diagnosis import DiagnosisConfig, diagnose, render_diagnosis_markdown
from defect_pipeline.ml.stage import stage_rerun_target
from defect_pipeline.util import names_same_place


def diagnose_history(history: TrainingHistory, params: DiagnosisParams, model: ModelParams, stage1: StageParams,
                     stage2: StageParams, stage3: StageParams) -> tuple[dict[str, Any], str]:
    """Diagnose the catalog's ``diagnosis_history`` (and the ``steps.csv`` beside it, when there is one).

    The commands rerun ``diagnosis.stage`` (or the stage whose folder holds the history,
    ``.../stage2/history.csv``) from its current parameters; with neither, the report has none.
    """
    if params.history is not None and not names_same_place(params.history, history.path):
        raise ValueError(f"diagnosis.history is {params.history} but the catalog's diagnosis_history reads "
                         f"{history.path}: give the file with --params diagnosis.history=<path> (the catalog reads it "
                         "from there), or point diagnosis_history at it in conf/local/catalog.yml")
    epochs = history.epochs
    if params.monitor not in epochs.columns:
        raise ValueError(f"diagnosis.monitor {params.monitor!r} is not a column of {history.path}; columns: "
                         f"{', '.join(c for c in epochs.columns if c.startswith('val_'))}")
    folder = Path(history.path).parent.name
    stage = params.stage or (folder if folder in STAGES else None)
    blocks = dict(zip(STAGES, (stage1, stage2, stage3), strict=True))
    target = None if stage is None else stage_rerun_target(stage, blocks[stage], model)
    report = diagnose(epochs, DiagnosisConfig.from_params(params), steps=history.steps, target=target)
    report["history"] = history.path
    return report, render_diagnosis_markdown(report, title=history.path)
