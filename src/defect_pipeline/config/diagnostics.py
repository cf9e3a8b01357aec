"""Parameter block of the training-curve diagnosis (``diagnosis``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from defect_pipeline.config.base import StrictModel


class DiagnosisParams(StrictModel):
    """Block ``diagnosis``: alert levels of the curve diagnosis, and the history for ``--pipeline=diagnose``."""

    gap_warn: float = Field(1.2, gt=1.0, description="val/train loss ratio that gives a warning")
    gap_alert: float = Field(1.5, gt=1.0, description="val/train loss ratio that gives an alert")
    min_delta: float = Field(1e-3, ge=0.0, description="smallest change of the monitored metric that counts")
    plateau_epochs: int = Field(3, ge=1, description="epochs without improvement that make a plateau")
    divergence_factor: float = Field(1.5, gt=1.0, description="train loss above this x its best = divergence")
    oscillation_ratio: float = Field(0.7, gt=0.0, le=1.0, description="share of direction changes = oscillation")
    lr_decayed_fraction: float = Field(0.2, gt=0.0, lt=1.0,
                                       description="LR below this fraction of its peak counts as decayed")
    history: str | None = Field(None, description="kedro run --pipeline=diagnose: path of a history.csv")
    monitor: str = Field("val_combined_score", description="--pipeline=diagnose: the monitored column")
    mode: Literal["max", "min"] = "max"

    @model_validator(mode="after")
    def _alert_above_warn(self) -> DiagnosisParams:
        if self.gap_alert < self.gap_warn:
            raise ValueError(f"gap_alert ({self.gap_alert}) must be >= gap_warn ({self.gap_warn})")
        return self
