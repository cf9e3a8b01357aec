"""Parameter blocks of tracking: the run comparison (``compare_runs``) and the model registry (``registry``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from defect_pipeline.config.base import StrictModel


class CompareRunsParams(StrictModel):
    """Block ``compare_runs``: which stage runs of the experiment go into the comparison table."""

    stages: list[str] | None = Field(None, description="only these stages (e.g. [stage2]); null = every stage")
    statuses: list[Literal["FINISHED", "FAILED", "KILLED", "RUNNING", "SCHEDULED"]] = Field(
        ["FINISHED"], min_length=1, description="run statuses to include")
    max_runs: int = Field(500, ge=1, description="newest runs considered")


class PromotionParams(StrictModel):
    """Block ``registry.promote``: when a newly registered version becomes the champion."""

    metric: str = Field("test_combined_score", min_length=1,
                        description="test metric of the evaluate run compared (test_<metric> at tuned thresholds, "
                                    "test_fixed_<metric> at 0.5)")
    greater_is_better: bool = Field(True, description="false for a metric where lower wins (e.g. a loss)")
    min_delta: float = Field(0.0, ge=0.0, description="the candidate must beat the champion by more than this")
    require_same_manifest: bool = Field(True, description="compare only when both were tested on the same data "
                                                          "manifest; false: a champion tested on other data is "
                                                          "replaced")


class RegistryParams(StrictModel):
    """Block ``registry``: the tuned model as an MLflow registered model, its aliases and promotion."""

    enabled: bool = Field(True, description="register the tuned model after `thresholds` (needs MLflow tracking)")
    name: str = Field("defect_pipeline", min_length=1, pattern=r"^[^/:@]+$",
                      description="the registered model's name (models:/<name>@<alias>)")
    candidate_alias: str = Field("candidate", pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$",
                                 description="alias of the newest registered version")
    champion_alias: str = Field("champion", pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$",
                                description="alias of the promoted version")
    promote: PromotionParams = Field(default_factory=PromotionParams)
