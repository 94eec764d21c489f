"""The run-directory lock, in-process: a live holder refuses a second claim, naming itself; a dead
holder's lock is taken over, saying so; a clean release leaves nothing behind.

A second `RunLock` on the same file in one process is a second open file description, which
flock treats exactly as another process. The dead holder is a real process that took the lock
and was killed with SIGKILL.
"""

import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import pytest

from llama_fdl import run_lock, runner
from llama_fdl.run_lock import RunDirectoryBusy, RunLock

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_a_held_directory_refuses_a_second_claim_naming_the_holder(tmp_path):
    first = RunLock(tmp_path)
    assert first.acquire() is None
    with pytest.raises(RunDirectoryBusy) as refused:
        RunLock(tmp_path).acquire()
    message = str(refused.value)
    holder = run_lock.read_holder(tmp_path / "lock")
    assert f"pid {os.getpid()} on host {holder.host}, started {holder.started}" in message
    assert "pass another --workdir" in message and "\n" not in message
    first.release()
    assert not (tmp_path / "lock").exists()
    # Control: once released, the same claim succeeds.
    again = RunLock(tmp_path)
    assert again.acquire() is None
    again.release()


def test_the_lock_of_a_killed_process_is_taken_over_and_named(tmp_path):
    script = textwrap.dedent(
        f"""
        import pathlib, sys, time
        sys.path.insert(0, {str(REPO)!r})
        from llama_fdl.run_lock import RunLock
        RunLock(pathlib.Path({str(tmp_path)!r})).acquire()
        print("locked", flush=True)
        time.sleep(600)
        """
    )
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirectoryBusy, match=f"pid {holder.pid} on host"):
            RunLock(tmp_path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (tmp_path / "lock").exists()  # a killed holder cannot clean up
    lock = RunLock(tmp_path)
    previous = lock.acquire()
    assert previous is not None and previous.pid == holder.pid
    assert run_lock.read_holder(tmp_path / "lock").pid == os.getpid()
    lock.release()


def test_the_runner_refuses_a_held_directory_and_leaves_it_as_it_was(tmp_path):
    import experiments

    workdir = tmp_path / "run"
    workdir.mkdir()
    held = RunLock(workdir)
    held.acquire()
    before = sorted(p.name for p in workdir.iterdir())
    cfg = experiments.tiny()
    with pytest.raises(runner.RunError, match=f"is in use by pid {os.getpid()}"):
        runner.claim_workdir(workdir, cfg, "{}", start_elsewhere=True)
    assert sorted(p.name for p in workdir.iterdir()) == before
    held.release()
