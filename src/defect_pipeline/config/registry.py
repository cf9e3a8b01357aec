"""The block registry: which top-level parameter blocks exist, and the start-up check of all of them.

:func:`validate_parameters` checks the whole ``params`` dictionary Kedro resolved (including
``--params`` overrides) against the model registered for each block, rejects unknown blocks
with "did you mean" hints, and raises one :class:`~defect_pipeline.config.base.ParameterError`
listing every problem. This is the one config module that imports every block module; the
block modules import only :mod:`defect_pipeline.config.base` (and each other), never this one.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from defect_pipeline.config.base import ParameterError, StrictModel, format_validation_error
from defect_pipeline.config.comparison import CompareBackbonesParams
from defect_pipeline.config.data import DataParams
from defect_pipeline.config.diagnostics import DiagnosisParams
from defect_pipeline.config.evaluation import (EnsembleParams, EvaluationParams, ExportParams, InferenceParams,
                                               ThresholdsParams)
from defect_pipeline.config.inspection import InspectParams
from defect_pipeline.config.tracking import CompareRunsParams, RegistryParams
from defect_pipeline.config.training import (STAGES, AugmentationParams, ModelParams, RuntimeParams, StageParams,
                                             TrainerParams)

__all__ = ["BLOCKS", "STAGES", "validate_parameters"]

BLOCKS: dict[str, type[StrictModel]] = {
    "data": DataParams, "model": ModelParams, "augmentation": AugmentationParams, "runtime": RuntimeParams,
    "trainer": TrainerParams,
    **{stage: StageParams for stage in STAGES},
    "compare_runs": CompareRunsParams, "thresholds": ThresholdsParams, "evaluation": EvaluationParams,
    "inference": InferenceParams, "export": ExportParams, "diagnosis": DiagnosisParams, "inspect": InspectParams,
    "compare_backbones": CompareBackbonesParams, "ensemble": EnsembleParams, "registry": RegistryParams,
}
"""Every known top-level parameter block and the model that validates it."""


def validate_parameters(params: Mapping[str, Any]) -> dict[str, StrictModel]:
    """Validate every known parameter block; reject unknown top-level blocks.

    Args:
        params: the resolved parameters dictionary (``context.config_loader["parameters"]`` in
            Kedro; a block that is already an instance of its model, as Kedro's own type-hint
            validation puts in ``context.params``, is accepted as it is).

    Returns:
        The validated, frozen model for each block present.

    Raises:
        ParameterError: listing every problem found, each naming its dotted key.
    """
    problems: list[str] = []
    validated: dict[str, StrictModel] = {}
    for block, value in params.items():
        model = BLOCKS.get(block)
        if model is None:
            close = difflib.get_close_matches(block, list(BLOCKS), n=3)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            problems.append(
                f"{block}: unknown parameter block.{hint} Known blocks: {', '.join(BLOCKS)}."
            )
            continue
        if isinstance(value, model):  # Kedro already built it from a node's type hint (context.params)
            validated[block] = value
            continue
        if not isinstance(value, Mapping):
            problems.append(f"{block}: must be a mapping of keys to values (got {value!r})")
            continue
        try:
            validated[block] = model.model_validate(dict(value))
        except ValidationError as error:
            problems.extend(format_validation_error(block, model, error))
    if problems:
        raise ParameterError(problems)
    return validated
