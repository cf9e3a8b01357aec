"""Interrupted runs: SIGTERM stops ``kedro run`` like Ctrl-C, and every MLflow run left open ends KILLED.

A ``KeyboardInterrupt`` is not an ``Exception``: Kedro's error hooks do not see it, and MLflow's
own exit handler would mark the open runs FINISHED. :class:`InterruptionHook` turns SIGTERM into
a ``KeyboardInterrupt`` for the duration of a pipeline run and registers, once, an exit handler
that closes every run still open as KILLED. A SIGKILL cannot be handled: its runs stay RUNNING.
"""

from __future__ import annotations

import atexit
import logging
import signal
import threading
from typing import Any

import mlflow
from kedro.framework.hooks import hook_impl

logger = logging.getLogger(__name__)


def _sigterm_to_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"terminated by signal {signum}")


def end_open_runs(status: str) -> None:
    """End every MLflow run still RUNNING with ``status`` (the exit handler, with ``KILLED``).

    The fluent run stack can still hold a run that is already closed: kedro-mlflow re-activates
    its run in each node's thread and ends it once, in the main thread. Such an entry is popped
    with the status it already has (a finished run must not turn KILLED at exit).
    """
    client = mlflow.MlflowClient()
    while mlflow.active_run() is not None:
        run_id = mlflow.active_run().info.run_id
        current = client.get_run(run_id).info.status
        if current != "RUNNING":
            mlflow.end_run(current)
            continue
        mlflow.end_run(status)
        logger.warning("MLflow run %s ended %s: the run was interrupted", run_id, status)


class InterruptionHook:
    """SIGTERM stops the run like Ctrl-C, and an interrupted run ends KILLED in MLflow.

    Ordering:

    * ``before_pipeline_run`` is ``trylast``: the SIGTERM handler is installed after the
      tryfirst checks (which may refuse the run; Kedro then calls no hook that would restore the
      previous handler) and once kedro-mlflow has opened its run; ``after_pipeline_run`` and
      ``on_pipeline_error`` restore the previous handler.
    * The exit handler is registered after MLflow's own (MLflow registers it when it is
      imported, before this module), so it runs first at exit: the runs an interruption left
      open end KILLED before MLflow would end them FINISHED. After a normal or failed run
      nothing is open any more and it does nothing.
    """

    def __init__(self) -> None:
        self._exit_handler_registered = False
        self._previous_sigterm: Any = None

    @hook_impl(trylast=True)
    def before_pipeline_run(self) -> None:
        if not self._exit_handler_registered:
            atexit.register(end_open_runs, "KILLED")
            self._exit_handler_registered = True
        if threading.current_thread() is threading.main_thread():
            self._previous_sigterm = signal.signal(signal.SIGTERM, _sigterm_to_keyboard_interrupt)

    @hook_impl
    def after_pipeline_run(self) -> None:
        if threading.current_thread() is threading.main_thread() and self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None

    @hook_impl
    def on_pipeline_error(self) -> None:
        self.after_pipeline_run()
