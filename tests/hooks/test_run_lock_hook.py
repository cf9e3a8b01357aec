"""The run lock without a Kedro session, between real processes: a live holder refuses the next run by name, a
killed holder's lock is taken over with a warning, a refusal by a later start-up hook releases the lock.

(The `kedro run` level, with two real runs, is tests/pipelines/test_run_lock.py.)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pluggy
import pytest
from kedro.framework.hooks.specs import PipelineSpecs

from defect_pipeline.hooks.run_lock import RunLockedError, RunLockHook, acquire

HOLDER = textwrap.dedent('''
    import sys, time
    from defect_pipeline.hooks.run_lock import acquire
    acquire(sys.argv[1], pipeline="stage1")
    print("locked", flush=True)
    time.sleep(120)
''')


@pytest.fixture
def holder(tmp_path: Path):
    """Another process holding the lock of ``tmp_path/data/.kedro_run.lock``, as a running `kedro run` does."""
    lock = tmp_path / "data/.kedro_run.lock"
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock), "--pipeline=stage1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked", process.stderr.read()
    yield process, lock
    process.kill()
    process.wait()


def test_a_live_holder_refuses_the_next_run_naming_pid_command_and_start(holder) -> None:
    process, lock = holder
    content = json.loads(lock.read_text())
    with pytest.raises(RunLockedError) as error:
        acquire(lock, pipeline="data")
    message = str(error.value)
    assert f"PID {process.pid} on {socket.gethostname()}" in message
    assert f"started {content['started']}" in message and content["started"].startswith("20")
    assert "--pipeline=stage1" in message and "pipeline stage1" in message
    assert f"kill {process.pid}" in message and str(lock) in message
    assert json.loads(lock.read_text()) == content  # the holder's lock is untouched


def test_a_killed_holders_lock_is_taken_over_with_a_warning(holder, caplog: pytest.LogCaptureFixture) -> None:
    process, lock = holder
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert lock.is_file()  # a killed process cannot remove it
    with caplog.at_level(logging.WARNING):
        held = acquire(lock, pipeline="data")
    assert f"took over {lock}" in caplog.text and f"PID {process.pid}" in caplog.text
    assert "is no longer running" in caplog.text
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    held.release()
    assert not lock.exists()


FORKING_HOLDER = textwrap.dedent('''
    import os, sys, time
    from defect_pipeline.hooks.run_lock import acquire
    acquire(sys.argv[1], pipeline="stage1")
    if os.fork() == 0:  # a data-loader worker: forked while the lock is held, outlives the run for a while
        time.sleep(120)
        os._exit(0)
    print("locked", flush=True)
    time.sleep(120)
''')


def test_a_killed_holders_lock_is_free_although_a_child_it_forked_still_runs(tmp_path: Path) -> None:
    """Checked against the lock without the fork handler: the child's copy of the file keeps the flock, and the
    next run is refused ("still held by processes that the run ... started")."""
    lock = tmp_path / ".kedro_run.lock"
    process = subprocess.Popen([sys.executable, "-c", FORKING_HOLDER, str(lock)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert process.stdout.readline().strip() == "locked", process.stderr.read()
        process.kill()  # the run only: its forked child lives on
        process.wait()
        held = acquire(lock, pipeline="data")
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        held.release()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # the child, in the holder's process group


def test_a_lock_of_another_host_is_not_taken_over(tmp_path: Path) -> None:
    """Whether a process on another machine (a shared file system) still runs cannot be told from here."""
    lock = tmp_path / ".kedro_run.lock"
    lock.write_text(json.dumps({"pid": 1, "host": "elsewhere", "command": "kedro run", "started": "2030-01-01",
                                "pipeline": "stage2"}))
    with pytest.raises(RunLockedError, match=rf"(?s)PID 1 on elsewhere, started 2030-01-01.*cannot tell .*delete {lock} and run again"):
        acquire(lock, pipeline="data")


def test_this_process_can_run_again_after_a_run_that_never_released(tmp_path: Path) -> None:
    """In one process runs follow each other: a lock an interrupted session kept is this process's own."""
    lock = tmp_path / ".kedro_run.lock"
    acquire(lock, pipeline="stage1")  # never released, as after a KeyboardInterrupt inside the runner
    again = acquire(lock, pipeline="stage2")
    assert json.loads(lock.read_text())["pipeline"] == "stage2"
    again.release()
    assert not lock.exists()


def _hook_manager(*hooks) -> pluggy.PluginManager:
    manager = pluggy.PluginManager("kedro")
    manager.add_hookspecs(PipelineSpecs)
    for hook in hooks:
        manager.register(hook)
    return manager


class RefusingCheck:
    """A start-up check that refuses the run (as the pre-run checks do)."""

    @pluggy.HookimplMarker("kedro")(tryfirst=True)
    def before_pipeline_run(self) -> None:
        raise RuntimeError("refused")


def test_a_run_refused_by_a_later_start_up_hook_releases_the_lock(tmp_path: Path) -> None:
    manager = _hook_manager(RunLockHook(), RefusingCheck())
    with pytest.raises(RuntimeError, match="refused"):
        manager.hook.before_pipeline_run(run_params={"project_path": str(tmp_path), "pipeline_names": ["stage1"]},
                                         pipeline=None, catalog=None)
    assert not (tmp_path / "data/.kedro_run.lock").exists()


def test_the_lock_is_held_during_the_run_and_released_after_it(tmp_path: Path) -> None:
    manager = _hook_manager(RunLockHook())
    params = {"project_path": str(tmp_path), "pipeline_names": ["stage1"]}
    manager.hook.before_pipeline_run(run_params=params, pipeline=None, catalog=None)
    assert json.loads((tmp_path / "data/.kedro_run.lock").read_text())["pipeline"] == "stage1"
    manager.hook.on_pipeline_error(error=RuntimeError(), run_params=params, pipeline=None, catalog=None)
    assert not (tmp_path / "data/.kedro_run.lock").exists()



def test_without_fcntl_the_lock_module_imports_and_the_holders_pid_decides(tmp_path: Path) -> None:
    """Windows has neither ``fcntl`` nor ``os.register_at_fork``: settings.py imports this hook, so importing it
    there must not fail (it did: ``import fcntl`` at module level), and the lock falls back to the PID rule.
    Run in a fresh interpreter with both hidden, so this session's module stays as it is."""
    script = textwrap.dedent(f"""
        import json, os, socket, subprocess, sys, time
        sys.modules["fcntl"] = None  # `import fcntl` raises ImportError
        del os.register_at_fork
        from defect_pipeline.hooks import run_lock
        assert run_lock.fcntl is None
        lock = {str(tmp_path / ".kedro_run.lock")!r}
        live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        with open(lock, "w") as file:
            json.dump({{"pid": live.pid, "host": socket.gethostname(), "command": "kedro run",
                       "started": "2030-01-01", "pipeline": "stage2"}}, file)
        try:
            run_lock.acquire(lock, pipeline="data")
            raise SystemExit("a live holder's lock was taken")
        except run_lock.RunLockedError as error:
            assert f"PID {{live.pid}}" in str(error), error
        live.kill(); live.wait()
        taken = run_lock.acquire(lock, pipeline="data")  # its holder has ended: taken over
        assert json.load(open(lock))["pid"] == os.getpid()
        taken.release()
        assert not os.path.exists(lock)
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")})
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]
