"""Shared machinery for parameter models: strict base class, readable errors, the block registry.

Every parameter block is a :class:`StrictModel`: unknown keys are rejected, values are
type-checked without silent coercion of strings into numbers, and the resulting object is
frozen. :func:`validate_parameters` checks the whole ``params`` dictionary Kedro resolved
(including ``--params`` overrides) and raises one :class:`ParameterError` listing every
problem as ``<dotted.key>: <what is wrong>`` with "did you mean" hints for misspelt keys.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError


class StrictModel(BaseModel):
    """Base for parameter blocks: no unknown keys, no silent type coercion, immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class ParameterError(ValueError):
    """Raised when parameters are invalid; the message names every offending key."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(
            "Invalid parameters (fix them in conf/<env>/parameters_*.yml or the --params "
            f"override):\n{lines}"
        )


def _known_fields(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Names of the fields of the sub-model at ``loc`` (used for "did you mean" hints)."""
    current: Any = model
    for part in loc:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            break
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            current = annotation
        else:
            return []
    return list(getattr(current, "model_fields", {}))


def format_validation_error(block: str, model: type[BaseModel], error: ValidationError) -> list[str]:
    """Turn a pydantic error into ``block.key: message`` lines with spelling suggestions."""
    problems = []
    for item in error.errors():
        loc = tuple(item["loc"])
        dotted = ".".join([block, *(str(p) for p in loc)])
        if item["type"] == "extra_forbidden":
            known = _known_fields(model, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), known, n=3)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            problems.append(f"{dotted}: unknown key.{hint} Known keys here: {', '.join(known)}.")
        else:
            value = item.get("input")
            shown = "" if isinstance(value, Mapping) else f" (got {value!r})"
            problems.append(f"{dotted}: {item['msg']}{shown}")
    return problems


def flatten(data: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """``{"loss": {"weighting": "fixed"}}`` → ``{"loss.weighting": "fixed"}`` (parameter blocks as dotted keys)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, name, sep))
        else:
            out[name] = value
    return out


def _registry() -> dict[str, type[StrictModel]]:
    from defect_pipeline.config.data import DataParams
    from defect_pipeline.config.comparison import CompareBackbonesParams
    from defect_pipeline.config.diagnostics import DiagnosisParams
    from defect_pipeline.config.inspection import InspectParams
    from defect_pipeline.config.evaluation import (EnsembleParams, EvaluationParams, ExportParams, InferenceParams,
                                                   ThresholdsParams)
    from defect_pipeline.config.tracking import CompareRunsParams
    from defect_pipeline.config.training import (AugmentationParams, ModelParams, RuntimeParams, StageParams,
                                                  TrainerParams)

    return {"data": DataParams, "model": ModelParams, "augmentation": AugmentationParams, "runtime": RuntimeParams,
            "trainer": TrainerParams,
            "stage1": StageParams, "stage2": StageParams, "stage3": StageParams, "compare_runs": CompareRunsParams,
            "thresholds": ThresholdsParams, "evaluation": EvaluationParams, "inference": InferenceParams,
            "export": ExportParams, "diagnosis": DiagnosisParams, "inspect": InspectParams,
            "compare_backbones": CompareBackbonesParams, "ensemble": EnsembleParams}


def validate_parameters(params: Mapping[str, Any]) -> dict[str, StrictModel]:
    """Validate every known parameter block; reject unknown top-level blocks.

    Args:
        params: the resolved parameters dictionary (``context.params`` in Kedro).

    Returns:
        The validated, frozen model for each block present.

    Raises:
        ParameterError: listing every problem found, each naming its dotted key.
    """
    registry = _registry()
    problems: list[str] = []
    validated: dict[str, StrictModel] = {}
    for block, value in params.items():
        model = registry.get(block)
        if model is None:
            close = difflib.get_close_matches(block, list(registry), n=3)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            problems.append(
                f"{block}: unknown parameter block.{hint} Known blocks: {', '.join(registry)}."
            )
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
