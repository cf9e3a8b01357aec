"""Parameter block of the run comparison (``compare_runs``)."""

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
