"""Small neutral helpers shared by every layer; this module imports nothing of the project.

Anything here must be a pure function with no project dependency, so that ``config``, ``ml``,
``tracking`` and the hooks can all use it without creating an import cycle.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


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
