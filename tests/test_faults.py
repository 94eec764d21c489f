"""Faults, each really done: signals, a second launch on a busy run directory, a kill in the
middle of a save, NaNs, a mismatched or damaged checkpoint, an unwritable or full run directory.
Every test drives the real launcher: in a process of its own where signals, kills or the
process's exit are what is tested, in this one (tests/launcher.py's launch_here) otherwise."""

import hashlib
import os
import pathlib
import re
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
from launcher import checkpoint_steps, last_line, launch, launch_here, run_here, scalars, start

from llama_fdl import run_lock

TINY = "--fdl_config=experiments.tiny"


def _wait_for(predicate, proc: subprocess.Popen, seconds: float = 240) -> None:
    deadline = time.time() + seconds
    while not predicate() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)


def _until_training(proc: subprocess.Popen) -> str:
    """Reads the launcher's output until its first step line; returns what it read."""
    out = ""
    while not re.search(r"step +\d+/", out) and proc.poll() is None:
        out += proc.stdout.readline()
    return out


def _tree_digest(root: pathlib.Path) -> str:
    """A digest of every file's path and bytes under `root`."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_sigterm_saves_a_checkpoint_and_exits_zero(tmp_path):
    """Resuming from such a checkpoint with the same command: tests/test_multiprocess.py."""
    args = [TINY, "--fdl.trainer.num_train_steps=100000", "--fdl.trainer.log_every=1"]
    proc = start(*args, f"--workdir={tmp_path}")
    # Wait until training is under way, then send what a scheduler sends before preempting.
    out = _until_training(proc)
    proc.send_signal(signal.SIGTERM)
    out += proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, out[-3000:]
    saved = checkpoint_steps(tmp_path)
    assert len(saved) == 1 and 0 < saved[0] < 100000
    assert f"SIGTERM: saved the checkpoint at step {saved[0]}" in out


def test_a_second_launch_on_a_busy_run_directory_is_refused_and_ctrl_c_saves(tmp_path):
    long_run = ["--fdl.trainer.num_train_steps=100000", "--fdl.trainer.checkpoint.every_steps=100000"]
    args = [TINY, *long_run, f"--workdir={tmp_path}"]
    proc = start(*args)
    out = _until_training(proc)
    holder = run_lock.read_holder(tmp_path / "lock")
    assert holder.pid == proc.pid
    # The second launch in this process: the lock is another process's all the same, and the
    # one-line stderr of a whole launcher process is tests/test_cli.py's (the same error path);
    # a second process here would also leave the first training at full speed while it starts.
    second = launch_here(*args)
    assert second.returncode == 1
    assert second.stderr.strip().splitlines() == [
        f"error: {tmp_path} is in use by pid {proc.pid} on host {holder.host}, started "
        f"{holder.started} (it holds {tmp_path / 'lock'}); wait for that run to end or stop it, "
        "or pass another --workdir. (--traceback shows where)"
    ]
    proc.send_signal(signal.SIGINT)
    out += proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, out[-3000:]
    assert len(checkpoint_steps(tmp_path)) == 1 and "SIGINT: saved the checkpoint" in out
    # The refused launch wrote nothing: one event file, and the lock is gone with its holder.
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 1
    assert not (tmp_path / "lock").exists()


def test_a_kill_in_the_middle_of_a_save_never_leaves_a_checkpoint_taken_for_good(tmp_path):
    """Saves every step, so a save is nearly always in flight: SIGKILL the moment a temporary
    step directory is seen (repeat in the rare case the save completed in between), then show
    the resume ignores the half-written step."""
    args = [TINY, "--fdl.trainer.num_train_steps=100000", "--fdl.trainer.checkpoint.every_steps=1"]
    args.append("--fdl.trainer.checkpoint.keep_last=2")
    partial = []
    for _ in range(8):
        proc = start(*args, f"--workdir={tmp_path}")
        before = checkpoint_steps(tmp_path)
        _wait_for(lambda b=before: checkpoint_steps(tmp_path) != b, proc)
        _wait_for(lambda: any("tmp" in p.name for p in (tmp_path / "checkpoints").iterdir()), proc)
        proc.kill()
        proc.wait()
        partial = [p.name for p in (tmp_path / "checkpoints").iterdir() if "tmp" in p.name]
        if partial:
            break
    assert partial, "no kill landed inside a save in 8 tries"
    complete = checkpoint_steps(tmp_path)
    killed = proc.pid
    proc = start(*args, f"--workdir={tmp_path}")
    out = _until_training(proc)
    proc.send_signal(signal.SIGTERM)
    out += proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, out[-3000:]
    assert f"from the checkpoint at step {complete[-1]}" in out
    # A killed run cannot release its lock; the next launch takes it over and says from whom.
    assert f"Took over {tmp_path / 'lock'} from pid {killed} on host" in out


def test_a_nan_stops_the_run_naming_the_step_and_keeping_the_last_good_checkpoint(tmp_path):
    # An absurd learning rate with clipping off blows the weights up within a few steps.
    # In this process (the launcher's code, not its start-up): what is tested is its message.
    args = [TINY, "--fdl.optimizer.peak_learning_rate=1e30", "--fdl.optimizer.clip_norm=1e30"]
    args += ["--fdl.trainer.checkpoint.every_steps=1", "--fdl.trainer.log_every=1"]
    result = launch_here(*args, f"--workdir={tmp_path}")
    assert result.returncode == 1
    message = last_line(result.stderr)
    assert "non-finite loss, gradient or update" in message and "Traceback" not in result.stderr
    bad_step = int(message.split("Step ")[1].split(" ")[0])
    assert checkpoint_steps(tmp_path)[-1] == bad_step - 1
    assert f"last good checkpoint is step {bad_step - 1}" in message
    # The failed run closed its event file (this process lives on): every good step's loss is in it.
    assert sorted(scalars(tmp_path)["train/loss"]) == list(range(1, bad_step))


def test_skip_nonfinite_steps_goes_on_and_counts_them(tmp_path):
    # As a user would try it: an infinite learning rate gives finite losses and gradients but
    # non-finite updates, which must be skipped too, leaving a model that still evaluates.
    # (In this process: the launcher's exit status for this error class is the NaN test's above.)
    final = run_here(
        tmp_path, **{"optimizer.peak_learning_rate": float("1e999"), "trainer.skip_nonfinite_steps": True}
    )
    assert np.isfinite(final["eval/loss"])
    series = scalars(tmp_path)
    assert series["train/skipped_steps"][20] > 0
    assert np.isfinite(series["eval/loss"][20])
    assert checkpoint_steps(tmp_path) == [10, 20]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny run: checkpoints at steps 10 and 20, its TensorBoard scalars."""
    workdir = tmp_path_factory.mktemp("faults") / "finished"
    run_here(workdir)  # what the launcher runs, in this process: the tests launch what follows
    assert checkpoint_steps(workdir) == [10, 20]
    return workdir, scalars(workdir)


def test_a_checkpoint_of_another_shape_is_refused_and_nothing_is_written(tmp_path, finished):
    source, _ = finished
    # A run directory whose config.json is gone: only the checkpoint can tell it is another model.
    target = tmp_path / "target"
    shutil.copytree(source / "checkpoints", target / "checkpoints")
    before = _tree_digest(target)
    result = launch_here(TINY, "--fdl.model.config.embedding_dim=48", f"--workdir={target}")
    assert result.returncode == 1
    message = last_line(result.stderr)
    assert "params/" in message and "of shape (2, 32," in message and "needs (2, 48," in message, message
    assert "Traceback" not in result.stderr
    # Nothing written: no refused config.json (the original config can still resume here), no
    # event file, no lock.
    assert _tree_digest(target) == before
    assert sorted(p.name for p in target.iterdir()) == ["checkpoints"]


def test_a_damaged_latest_checkpoint_is_named_kept_and_the_one_before_resumed(tmp_path, finished):
    source, expected = finished
    workdir = tmp_path / "run"
    shutil.copytree(source, workdir)
    # Disk trouble or a bad copy: every data file of step 20 cut short.
    damaged = workdir / "checkpoints" / "20"
    for path in [*damaged.glob("state/ocdbt.process_0/d/*"), *damaged.glob("data/*.data-*")]:
        os.truncate(path, 100)
    digest = _tree_digest(damaged)
    result = launch_here(TINY, f"--workdir={workdir}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    (line,) = [x for x in result.stdout.splitlines() if "cannot be read" in x]
    kept = workdir / "unreadable_checkpoints" / "20"
    assert line.startswith("The checkpoint at step 20 cannot be read (") and line.endswith(
        f"); resuming from step 10, the newest that restores. Step 20 was moved to {kept}, not deleted."
    ), line
    assert _tree_digest(kept) == digest  # moved as it was, never deleted
    assert checkpoint_steps(workdir) == [10, 20]
    # From step 10 on, the same state and data: the same losses as the undamaged run.
    got = scalars(workdir)
    assert got["train/loss"][15] == expected["train/loss"][15]
    assert got["eval/loss"][20] == expected["eval/loss"][20]


def test_a_run_directory_under_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    result = launch_here(TINY, f"--workdir={tmp_path / 'file' / 'run'}")
    assert result.returncode == 1
    assert "Cannot write the run directory" in last_line(result.stderr)
    assert "Traceback" not in result.stderr


def test_a_full_disk_is_a_clear_error_and_no_partial_checkpoint_is_taken(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root (CI runs as root)")
    mount = tmp_path / "small_disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mount)], check=True)
    try:
        result = launch(TINY, f"--workdir={mount / 'run'}")
        assert result.returncode == 1
        message = last_line(result.stderr)
        assert "Could not write the checkpoint" in message and "No space left" in message, message
        assert checkpoint_steps(mount / "run") == []
    finally:
        subprocess.run(["umount", str(mount)], check=True)
