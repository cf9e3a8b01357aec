"""Ctrl-C / SIGTERM during training: record the request so the loop can stop at a clean point.

While training, in the main thread of a single-process run, the first SIGINT or SIGTERM only
records the request; the engine saves the state at the next optimizer-step boundary as ``last``
(with how far into the epoch it got) and raises ``KeyboardInterrupt``. A second signal stops at
once. The previous handlers are restored when training ends. Several processes: the launching
process stops the workers, and ``last`` is the last finished epoch.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

logger = logging.getLogger(__name__)


class StopRequest:
    """A context manager that catches SIGINT/SIGTERM into :attr:`requested` (the signal number)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if self.enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt(f"signal {signum} again: stopping without a last checkpoint of this step")
        self.requested = signum
        logger.warning("signal %d: finishing this optimizer step, saving the last checkpoint, then stopping "
                       "(send it again to stop at once)", signum)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
