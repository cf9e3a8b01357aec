"""Parameter block of the checkpoint inspection (``inspect``)."""

from __future__ import annotations

from pydantic import Field

from defect_pipeline.config.base import StrictModel


class InspectParams(StrictModel):
    """Block ``inspect``: which folder to list and which checkpoint to detail."""

    path: str = Field("data/06_models", description="folder searched (recursively) for checkpoints")
    checkpoint: str | None = Field(None, description="the file to detail, relative to path or absolute; "
                                                     "null: the newest last.pt")
