"""Parameter block of the backbone comparison (``compare_backbones``)."""

from __future__ import annotations

from pydantic import Field, model_validator

from defect_pipeline.config.base import StrictModel
from defect_pipeline.config.training import StageParams

MAX_BACKBONES = 6  # the number of namespaced training slots in the pipeline


def _comparison_stage() -> StageParams:
    return StageParams(init_from="scratch", resume=False, epochs=3, warmup_epochs=0.5)


class CompareBackbonesParams(StrictModel):
    """Block ``compare_backbones``: the candidates and the one training recipe they all get."""

    backbones: list[str] = Field(..., min_length=1, max_length=MAX_BACKBONES,
                                 description=f"timm backbone names, at most {MAX_BACKBONES}")
    stage: StageParams = Field(default_factory=_comparison_stage,
                               description="the equal budget: a stage block (epochs, time_budget_s, lr, ...)")
    memory_fraction: float = Field(0.8, gt=0.0, le=1.0,
                                   description="refuse a backbone whose training state alone needs more than "
                                               "this share of the free memory")

    @model_validator(mode="after")
    def _unique_and_fresh(self) -> CompareBackbonesParams:
        if len(set(self.backbones)) != len(self.backbones):
            raise ValueError(f"backbones must be unique, got {self.backbones}")
        if self.stage.init_from != "scratch":
            raise ValueError("stage.init_from must be scratch: every candidate starts from the same point "
                             "(use model.pretrained for pretrained backbones)")
        return self
