"""Node of the ``diagnose`` pipeline (the work is in :mod:`defect_pipeline.ml.diagnosis`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from defect_pipeline.config import DiagnosisParams
from defect_pipeline.datasets import TrainingHistory
from defect_pipeline.ml.diagnosis import DiagnosisConfig, diagnose, render_diagnosis_markdown


def diagnose_history(history: TrainingHistory, params: DiagnosisParams) -> tuple[dict[str, Any], str]:
    """Diagnose the catalog's ``diagnosis_history`` (and the ``steps.csv`` beside it, when there is one)."""
    if params.history is not None and Path(params.history) != Path(history.path):
        raise ValueError(f"diagnosis.history is {params.history} but the catalog's diagnosis_history reads "
                         f"{history.path}: give the file with --params diagnosis.history=<path> (the catalog reads it "
                         "from there), or point diagnosis_history at it in conf/local/catalog.yml")
    epochs = history.epochs
    if params.monitor not in epochs.columns:
        raise ValueError(f"diagnosis.monitor {params.monitor!r} is not a column of {history.path}; columns: "
                         f"{', '.join(c for c in epochs.columns if c.startswith('val_'))}")
    report = diagnose(epochs, DiagnosisConfig.from_params(params), steps=history.steps)
    report["history"] = history.path
    return report, render_diagnosis_markdown(report, title=history.path)
