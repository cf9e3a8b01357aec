"""Every `kedro run` writes its log to a file of its own, ``logs/<start>_<pipeline>.log``, kept in its MLflow run.

Why a hook and not ``conf/logging.yml``: Kedro applies its logging configuration once, when
``kedro.framework.project`` is imported (``KEDRO_LOGGING_CONFIG``, else ``conf/logging.yml``, else
its own default), read with ``yaml.safe_load`` — no interpolation, so a file handler configured
there writes one fixed file name for every run — and it accepts handler classes from ``logging`` and
``kedro.logging`` only (``KEDRO_LOGGING_MODULE_ALLOWLIST`` for more). The pipeline's name and the
run's start are known only when the run starts. So :class:`RunLogHook` adds a
:class:`logging.FileHandler` to the root logger when the run starts, whatever logging configuration
is in use (the console stays as that configuration sets it), and removes it when the run ends:

* the file gets every record the console gets at INFO and above (Kedro sets the project's and
  Kedro's loggers to INFO), with time, level and logger name; a failed run's traceback is added
  to the file only (the console shows Kedro's own message);
* when the run ends — finished, failed, refused at start-up, or interrupted (Ctrl-C, SIGTERM: at
  exit) — the file is closed and logged as an artifact ``logs/<file>`` of the MLflow parent run
  (tag ``defect_pipeline.log_file`` names the local file). Training worker processes of a
  multi-process stage log to their own console only.

``before_pipeline_run``, ``after_pipeline_run`` and ``on_pipeline_error`` are hook wrappers: the
file opens before every other start-up hook (so a refusal by the run lock or the pre-run checks is
in it) and closes after every other end-of-run hook (kedro-mlflow closing its run, the lock
released).
"""

from __future__ import annotations

import atexit
import logging
import re
import traceback
from collections.abc import Generator
from datetime import datetime
from pathlib import Path
from typing import Any

import mlflow
from kedro.framework.hooks import hook_impl

from defect_pipeline.tracking.runs import TAG_PREFIX

logger = logging.getLogger(__name__)

LOG_DIR = "logs"
LOG_FILE_TAG = f"{TAG_PREFIX}log_file"
FORMAT = "%(asctime)s %(levelname)-8s %(name)s: %(message)s"


def log_file_path(folder: Path, pipeline_names: list[str], started: datetime) -> Path:
    """``<folder>/<YYYY-MM-DD_HH-MM-SS>_<pipelines>.log`` (``default`` for Kedro's ``__default__``, several
    joined with ``+``); ``-2``, ``-3`` … appended when a run of the same second already has that name."""
    names = "+".join("default" if name == "__default__" else name for name in pipeline_names) or "default"
    stem = f"{started:%Y-%m-%d_%H-%M-%S}_{re.sub(r'[^A-Za-z0-9_.+-]', '_', names)}"
    path, count = folder / f"{stem}.log", 1
    while path.exists():
        count += 1
        path = folder / f"{stem}-{count}.log"
    return path


class RunLogHook:
    """The log file of each `kedro run` (see the module docstring)."""

    def __init__(self) -> None:
        self._handler: logging.FileHandler | None = None
        self._path: Path | None = None
        self._run_id: str | None = None
        self._tracking_uri: str | None = None
        self._exit_handler_registered = False

    @hook_impl(wrapper=True, tryfirst=True)
    def before_pipeline_run(self, run_params: dict[str, Any]) -> Generator[None, Any, Any]:
        self._open(run_params)
        try:
            result = yield
        except BaseException as error:
            logger.error("the run was refused before any node ran: %s", error)
            self._close("refused")
            raise
        active = mlflow.active_run()  # kedro-mlflow's run, opened by the hooks just run
        if active is not None and self._path is not None:
            self._run_id, self._tracking_uri = active.info.run_id, mlflow.get_tracking_uri()
            mlflow.set_tag(LOG_FILE_TAG, str(self._path))
        return result

    @hook_impl(wrapper=True, tryfirst=True)
    def after_pipeline_run(self) -> Generator[None, Any, Any]:
        try:
            return (yield)
        finally:
            self._close("finished")

    @hook_impl(wrapper=True, tryfirst=True)
    def on_pipeline_error(self, error: BaseException) -> Generator[None, Any, Any]:
        self._write_traceback(error)
        try:
            return (yield)
        finally:
            self._close("failed")

    def _open(self, run_params: dict[str, Any]) -> None:
        self._close("superseded")  # a run in this process that ended without either end hook (interrupted)
        names = run_params.get("pipeline_names") or [run_params.get("pipeline_name") or "__default__"]
        names = [names] if isinstance(names, str) else list(names)
        folder = Path(run_params.get("project_path") or ".") / LOG_DIR
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self._path = log_file_path(folder, names, datetime.now())
            self._handler = logging.FileHandler(self._path, encoding="utf-8")
        except OSError as error:  # a log file is worth a warning, not the run
            logger.warning("no log file for this run: cannot write into %s (%s)", folder, error)
            self._path = self._handler = None
            return
        self._handler.setLevel(logging.INFO)
        self._handler.setFormatter(logging.Formatter(FORMAT))
        logging.getLogger().addHandler(self._handler)
        self._run_id = self._tracking_uri = None
        if not self._exit_handler_registered:
            atexit.register(self._close, "interrupted")
            self._exit_handler_registered = True
        logger.info("this run's log file: %s", self._path)

    def _write_traceback(self, error: BaseException) -> None:
        """The failure's traceback, into the file only (the console shows Kedro's own message)."""
        if self._handler is None:
            return
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__)).rstrip()
        self._handler.handle(logging.makeLogRecord({"name": __name__, "levelno": logging.ERROR,
                                                    "levelname": "ERROR", "msg": "the run failed:\n%s",
                                                    "args": (text,)}))

    def _close(self, how: str) -> None:
        """Close and detach the file, then log it into the MLflow parent run (if there was one)."""
        handler, path, run_id, uri = self._handler, self._path, self._run_id, self._tracking_uri
        if handler is None or path is None:
            return
        self._handler = self._path = self._run_id = self._tracking_uri = None
        handler.handle(logging.makeLogRecord({"name": __name__, "levelno": logging.INFO, "levelname": "INFO",
                                              "msg": "run %s; log closed", "args": (how,)}))
        logging.getLogger().removeHandler(handler)
        handler.close()
        if run_id is None:
            return
        try:
            mlflow.MlflowClient(uri).log_artifact(run_id, str(path), artifact_path=LOG_DIR)
        except Exception as error:  # noqa: BLE001 - the run is over; losing the copy must not turn it into a failure
            logger.warning("the log file %s could not be logged to MLflow run %s: %s", path, run_id, error)
