"""Shared machinery for parameter models: the strict base class and readable errors.

Every parameter block is a :class:`StrictModel`: unknown keys are rejected, values are
type-checked without silent coercion of strings into numbers, and the resulting object is
frozen. A validation failure becomes one :class:`ParameterError` listing every problem as
``<dotted.key>: <what is wrong>`` with "did you mean" hints for misspelt keys
(:func:`format_validation_error`). The block registry that checks a whole ``params``
dictionary lives in :mod:`defect_pipeline.config.registry`; this module imports no block.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError


def _positive_devices(value: int | str) -> int | str:
    if isinstance(value, int) and value < 1:
        raise ValueError(f"devices must be >= 1 or 'auto', got {value}")
    return value


Devices = Annotated[int | Literal["auto"], AfterValidator(_positive_devices)]
"""A process count (``trainer.devices``, ``inference.devices``): a whole number >= 1, or ``auto``."""


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
