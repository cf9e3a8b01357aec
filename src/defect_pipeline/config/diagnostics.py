"""Parameter block of the training-curve diagnosis (``diagnosis``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from defect_pipeline.config.base import StrictModel
from defect_pipeline.config.training import STAGES


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
    # the rules behind these defaults: docs/diagnostics.md, "Thresholds and why"
    collapse_tolerance: float = Field(
        0.01, ge=0.0, lt=0.5, description="collapse: a validation F1 or defect IoU at or below this counts as 0 "
                                          "(0.01 reads 0.00 in every report)")
    trend_epochs: int = Field(5, ge=2, description="epochs over which a loss counts as flat or falling")
    flat_fraction: float = Field(
        0.05, gt=0.0, lt=1.0, description="a loss that changed by less than this fraction over trend_epochs is flat "
                                          "(about 1 %/epoch: it would take ~70 epochs to halve)")
    falling_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="rebalance: the other task's loss fell by at least this fraction over "
                                         "trend_epochs (it would halve within ~15 epochs)")
    high_loss_ratio: float = Field(
        0.5, gt=0.0, lt=1.0, description="a loss still above this fraction of its first epoch's has not converged "
                                         "(it has not halved)")
    underfit_accuracy: float = Field(
        0.9, gt=0.0, le=1.0, description="relax regularisation: training accuracy below this = the model does not "
                                         "fit its training images")
    accuracy_gap: float = Field(
        0.1, gt=0.0, lt=1.0, description="train minus validation accuracy at or above this = train >> val "
                                         "(2 standard errors of an accuracy near 0.5 on 100 images)")
    convergence_fraction: float = Field(0.9, gt=0.0, lt=1.0,
                                        description="convergence speed: epochs to reach this fraction of the best")
    history: str | None = Field(None, description="kedro run --pipeline=diagnose: path of a history.csv")
    stage: str | None = Field(None, description="--pipeline=diagnose: the stage the history belongs to, for the "
                                                "commands (null: the history's folder name, e.g. .../stage2/)")
    monitor: str = Field("val_combined_score", description="--pipeline=diagnose: the monitored column")
    mode: Literal["max", "min"] = "max"

    @model_validator(mode="after")
    def _alert_above_warn(self) -> DiagnosisParams:
        if self.gap_alert < self.gap_warn:
            raise ValueError(f"gap_alert ({self.gap_alert}) must be >= gap_warn ({self.gap_warn})")
        if self.falling_fraction <= self.flat_fraction:
            raise ValueError(f"falling_fraction ({self.falling_fraction}) must be above flat_fraction "
                             f"({self.flat_fraction}): a falling loss must fall more than a flat one")
        return self

    @field_validator("stage")
    @classmethod
    def _known_stage(cls, value: str | None) -> str | None:
        if value is not None and value not in STAGES:
            raise ValueError(f"stage must be one of {', '.join(STAGES)} or null, got {value!r}")
        return value
