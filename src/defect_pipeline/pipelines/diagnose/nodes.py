"""Node of the ``diagnose`` pipeline (the work is in :mod:`defect_pipeline.ml.diagnosis`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from defect_pipeline.config import DiagnosisParams
from defect_pipeline.ml.diagnosis import diagnose, render_diagnosis_markdown


def diagnose_history(params: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Diagnose ``diagnosis.history`` (and the ``steps.csv`` beside it, when there is one)."""
    cfg = DiagnosisParams.model_validate(params)
    if cfg.history is None:
        raise ValueError("diagnosis.history is not set: run `kedro run --pipeline=diagnose --params "
                         "diagnosis.history=data/08_reporting/stage2/history.csv` (stages diagnose themselves)")
    path = Path(cfg.history)
    if not path.is_file():
        raise FileNotFoundError(f"diagnosis.history {path} does not exist; point it at a history.csv written by a "
                                "training stage (data/08_reporting/<stage>/history.csv)")
    history = pd.read_csv(path)
    if cfg.monitor not in history.columns:
        raise ValueError(f"diagnosis.monitor {cfg.monitor!r} is not a column of {path}; columns: "
                         f"{', '.join(c for c in history.columns if c.startswith('val_'))}")
    steps_file = path.with_name("steps.csv")
    steps = pd.read_csv(steps_file) if steps_file.is_file() else None
    report = diagnose(history, cfg.config(), steps=steps)
    report["history"] = str(path)
    return report, render_diagnosis_markdown(report, title=str(path))
