"""One `kedro run` at a time per project: a second one is refused before it runs, naming the running one.

Two runs in one project would write the same checkpoints, manifests, reports and MLflow database.
:class:`RunLockHook` takes ``data/.kedro_run.lock`` before any other start-up hook (pre-run checks,
kedro-mlflow's run) and releases it when the run ends; a run that finds it held by a live run is
refused with that run's PID, host, command line and start time, and what to do.

How the lock works: the file holds the holder's details (JSON, written to a temp file and renamed
into place, so it is never seen half-written) and the holder keeps an exclusive ``flock`` on it.
The kernel drops a ``flock`` when its process dies, however it dies, so a crashed or killed run
never leaves the project stuck: the next run finds the file but not the ``flock`` and takes the
lock over with a warning naming the dead run. A lock written by another host (a shared file
system) is never taken over, as nothing here can tell whether that run is alive; where a file
system has no ``flock``, the holder's PID decides (alive on this host: held). The file is removed
only by a process holding its ``flock``, and a taker checks that the file it locked is still the
one at the path, so two runs starting together cannot both win. Forked children (data-loader
workers) close their copy of the file, so they never keep a killed run's lock.
"""

from __future__ import annotations

import atexit
import errno
import json
import logging
import os
import shlex
import socket
import sys
import time
from collections.abc import Generator
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl

try:  # POSIX; elsewhere (Windows) the holder's PID decides, as on a file system without flock
    import fcntl
except ImportError:  # pragma: no cover - exercised by a test that hides the module
    fcntl = None

logger = logging.getLogger(__name__)

LOCK_FILE = "data/.kedro_run.lock"
_ATTEMPTS = 100  # × _PAUSE: how long to wait for a holder that is writing or handing over the file
_PAUSE = 0.05


class RunLockedError(RuntimeError):
    """Another `kedro run` holds this project's run lock; nothing was run."""


@dataclass(frozen=True)
class RunInfo:
    """Who holds the lock: what the refusal message and the takeover warning name."""

    pid: int
    host: str
    command: str
    started: str
    pipeline: str

    @classmethod
    def of_this_process(cls, pipeline: str) -> RunInfo:
        return cls(os.getpid(), socket.gethostname(), shlex.join(sys.orig_argv),
                   datetime.now().astimezone().isoformat(timespec="seconds"), pipeline)

    @classmethod
    def read(cls, path: Path) -> RunInfo | None:
        """The details in ``path``; None when it is missing, empty or not this format."""
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def describe(self) -> str:
        return f"PID {self.pid} on {self.host}, started {self.started}, running `{self.command}` (pipeline {self.pipeline})"

    def is_alive(self) -> bool:
        """This host's process ``pid`` exists (another host's: assumed alive)."""
        if self.host != socket.gethostname():
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


@dataclass
class RunLock:
    """The lock this process holds: ``fd`` is the open, ``flock``ed lock file."""

    path: Path
    fd: int | None
    info: RunInfo

    def release(self) -> None:
        """Remove the lock file (while still holding its ``flock``) and close it; only in the process that took it."""
        if self.fd is None or os.getpid() != self.info.pid:
            return
        try:
            if _same_file(self.fd, self.path):
                self.path.unlink()
        finally:
            os.close(self.fd)
            self.fd = None
            if _HELD.get(self.path) is self:
                del _HELD[self.path]


_HELD: dict[Path, RunLock] = {}  # the locks this process holds, by path


def acquire(path: str | os.PathLike, *, pipeline: str) -> RunLock:
    """Take the run lock at ``path`` for this process, or raise :class:`RunLockedError` naming its holder."""
    path = Path(os.path.abspath(path))
    leftover = _HELD.pop(path, None)
    if leftover is not None:  # runs in one process follow each other: an earlier one was interrupted
        logger.info("releasing the run lock %s that an earlier run in this process did not release", path)
        leftover.release()
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(_ATTEMPTS):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        locked = _try_flock(fd)
        if locked is False or not _same_file(fd, path):
            os.close(fd)
            holder = RunInfo.read(path)
            if locked is False and holder is not None and holder.is_alive():
                raise RunLockedError(_refusal(path, holder))
            time.sleep(_PAUSE)  # being written, released or handed over right now
            continue
        try:
            previous = RunInfo.read(path)
            if previous is not None:
                _check_can_take_over(path, previous, flock_works=locked is True)
            lock = _replace_with_ours(path, RunInfo.of_this_process(pipeline))
        finally:
            os.close(fd)  # the flock on the file that was there (ours is on the new file)
        if previous is not None:
            logger.warning("took over %s: the run that held it (%s) is no longer running (it crashed or was "
                           "killed); its outputs may be incomplete, and a training stage resumes from its last "
                           "checkpoint", path, previous.describe())
        _HELD[path] = lock
        return lock
    holder = RunInfo.read(path)
    if holder is None:
        raise RunLockedError(f"the run lock {path} is held by a process that has not written its details; if no "
                             f"`kedro run` is running in this project, delete {path} and run again")
    raise RunLockedError(f"the run lock {path} is still held by processes that the run {holder.describe()} started, "
                         f"although PID {holder.pid} itself has ended; wait a few seconds or end them (`fuser {path}` "
                         "lists them), then run again")


def _check_can_take_over(path: Path, previous: RunInfo, *, flock_works: bool) -> None:
    """Raise if ``previous`` (whose file this process now ``flock``s) may still be running."""
    if previous.host != socket.gethostname():
        raise RunLockedError(
            f"{_refusal(path, previous)}\nThat run is on another host: this machine cannot tell whether it is still "
            f"running. If it is not, delete {path} and run again.")
    if not flock_works and previous.pid != os.getpid() and previous.is_alive():
        raise RunLockedError(_refusal(path, previous))


def _replace_with_ours(path: Path, info: RunInfo) -> RunLock:
    """Write ``info`` to a temp file, ``flock`` it and rename it over ``path``: the new lock, never half-written."""
    tmp = path.with_name(f"{path.name}.{info.pid}.tmp")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, json.dumps(asdict(info), indent=2).encode())
        os.fsync(fd)
        _try_flock(fd)
        os.replace(tmp, path)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    return RunLock(path, fd, info)


def _try_flock(fd: int) -> bool | None:
    """True: exclusive ``flock`` taken; False: another process holds it; None: this file system (or OS) has none."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as error:
        if error.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            return None
        raise


def _same_file(fd: int, path: Path) -> bool:
    """``fd`` is still the file at ``path`` (not one that was removed or replaced meanwhile)."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _refusal(path: Path, holder: RunInfo) -> str:
    return (f"another `kedro run` is running in this project: {holder.describe()}. This run would write the same "
            "checkpoints, manifests and reports, so it was refused before any node ran. Wait for that run to end, "
            f"or stop it (Ctrl-C in its terminal, or `kill {holder.pid}`: a training stage saves its last "
            "checkpoint and continues from it on the next run), then run again; to run side by side, use a copy of "
            f"the project. The lock is {path}; it goes away when that run ends.")


@atexit.register
def _release_all() -> None:
    for lock in list(_HELD.values()):
        lock.release()


def _forget_in_forked_child() -> None:
    """A forked child (a data-loader worker) closes its copy of the lock file: only the run holds the ``flock``,
    so a killed run's lock is free at once even while its workers are still winding down."""
    for lock in _HELD.values():
        if lock.fd is not None:
            os.close(lock.fd)
            lock.fd = None
    _HELD.clear()


if hasattr(os, "register_at_fork"):  # POSIX only; Windows has no fork
    os.register_at_fork(after_in_child=_forget_in_forked_child)


class RunLockHook:
    """Holds the project's run lock from before the first start-up hook until the run has ended.

    ``before_pipeline_run`` is a hook *wrapper*: it takes the lock before every other
    ``before_pipeline_run`` implementation (the pre-run checks, kedro-mlflow opening its run) and
    releases it again when one of them refuses the run (Kedro then calls no other hook). After the
    run, ``after_pipeline_run`` / ``on_pipeline_error`` release it last (``trylast``), once the other
    hooks have written and logged what they write; an exit handler releases it when the process
    ends otherwise (Ctrl-C, SIGTERM).
    """

    def __init__(self) -> None:
        self._lock: RunLock | None = None

    @hook_impl(wrapper=True, tryfirst=True)
    def before_pipeline_run(self, run_params: dict[str, Any]) -> Generator[None, Any, Any]:
        names = run_params.get("pipeline_names") or [run_params.get("pipeline_name") or "__default__"]
        self._lock = acquire(Path(run_params["project_path"]) / LOCK_FILE, pipeline=",".join(names))
        try:
            return (yield)
        except BaseException:
            self._release()
            raise

    @hook_impl(trylast=True)
    def after_pipeline_run(self) -> None:
        self._release()

    @hook_impl(trylast=True)
    def on_pipeline_error(self) -> None:
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None
