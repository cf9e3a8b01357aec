"""Peak resident memory of this process, where the platform can tell (no POSIX-only import at import time).

:func:`peak_rss_mb` reads ``resource.getrusage`` on POSIX systems (``ru_maxrss`` is in kilobytes
on Linux, in bytes on macOS); where ``resource`` does not exist (Windows) it reads psutil's peak
working set (``peak_wset``) when psutil is installed. Otherwise it returns None and callers leave
the figure out rather than report a made-up one (psutil's current RSS is not a peak).
"""

from __future__ import annotations

import importlib
import sys


def _module(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def peak_rss_mb() -> float | None:
    """The process's peak resident set size in MiB, or None where neither ``resource`` nor psutil can tell."""
    resource = _module("resource")
    if resource is not None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024
    psutil = _module("psutil")
    peak = getattr(psutil.Process().memory_info(), "peak_wset", None) if psutil is not None else None
    return None if peak is None else peak / 2**20
