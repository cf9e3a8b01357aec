"""Small neutral helpers shared by every layer; this module imports nothing of the project.

Anything here must be a pure function with no project dependency, so that ``config``, ``ml``,
``tracking`` and the hooks can all use it without creating an import cycle.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from pathlib import Path
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


def names_same_place(given: str | os.PathLike, resolved: str | os.PathLike) -> bool:
    """Whether a path from the parameters (absolute, or relative to the project) names ``resolved``.

    Kedro's catalog makes its local paths absolute against the project folder, while a parameter
    keeps what the user typed (``data/06_models``); a relative one matches when it is the tail of
    the resolved path, whatever the process's working folder.
    """
    given_path = Path(os.path.normpath(given))
    if given_path.is_absolute():
        return given_path.resolve() == Path(resolved).resolve()
    return Path(os.path.normpath(resolved)).parts[-len(given_path.parts):] == given_path.parts


def describe_machine() -> str:
    """One line: CPU model, cores, memory, Python and OS."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory = f", {pages / 2**30:.0f} GiB RAM"
    except (ValueError, OSError):
        pass
    return (f"{cpu}, {os.cpu_count()} cores{memory}; Python {platform.python_version()}, "
            f"{platform.system()} {platform.release()}")
