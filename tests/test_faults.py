"""Faults, each really done: signals, a kill in the middle of a save, NaNs, a mismatched
checkpoint, an unwritable or full run directory. Every test drives the real launcher."""

import hashlib
import os
import pathlib
import random
import re
import shutil
import signal
import subprocess
import time

import pytest
from launcher import checkpoint_steps, last_line, launch, scalars, start

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


def test_sigterm_saves_a_checkpoint_exits_zero_and_the_same_command_resumes(tmp_path):
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
    proc = start(*args, f"--workdir={tmp_path}")
    out = _until_training(proc)
    proc.send_signal(signal.SIGTERM)
    out += proc.communicate(timeout=120)[0]
    assert f"from the checkpoint at step {saved[0]}" in out
    assert checkpoint_steps(tmp_path)[-1] > saved[0]


def test_ctrl_c_saves_a_checkpoint_and_exits_zero(tmp_path):
    proc = start(TINY, "--fdl.trainer.num_train_steps=100000", f"--workdir={tmp_path}")
    out = _until_training(proc)
    proc.send_signal(signal.SIGINT)
    out += proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, out[-3000:]
    assert len(checkpoint_steps(tmp_path)) == 1 and "SIGINT: saved the checkpoint" in out


def test_a_kill_in_the_middle_of_a_save_never_leaves_a_checkpoint_taken_for_good(tmp_path):
    """Saves every step, so a SIGKILL at a random moment often lands inside one. Repeat until a
    half-written step directory is left behind, then show the resume ignores it."""
    args = [TINY, "--fdl.trainer.num_train_steps=100000", "--fdl.trainer.checkpoint.every_steps=1"]
    args.append("--fdl.trainer.checkpoint.keep_last=2")
    rng = random.Random(0)
    partial = []
    for _ in range(8):
        proc = start(*args, f"--workdir={tmp_path}")
        before = checkpoint_steps(tmp_path)
        _wait_for(lambda b=before: checkpoint_steps(tmp_path) != b, proc)
        time.sleep(rng.uniform(0.0, 0.3))
        proc.kill()
        proc.wait()
        partial = [p.name for p in (tmp_path / "checkpoints").iterdir() if "tmp" in p.name]
        if partial:
            break
    assert partial, "no kill landed inside a save in 8 tries"
    complete = checkpoint_steps(tmp_path)
    proc = start(*args, f"--workdir={tmp_path}")
    out = _until_training(proc)
    proc.send_signal(signal.SIGTERM)
    out += proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, out[-3000:]
    assert f"from the checkpoint at step {complete[-1]}" in out


def test_a_nan_stops_the_run_naming_the_step_and_keeping_the_last_good_checkpoint(tmp_path):
    # An absurd learning rate with clipping off blows the weights up within a few steps.
    args = [TINY, "--fdl.optimizer.peak_learning_rate=1e30", "--fdl.optimizer.clip_norm=1e30"]
    result = launch(*args, "--fdl.trainer.checkpoint.every_steps=1", f"--workdir={tmp_path}")
    assert result.returncode == 1
    message = last_line(result.stderr)
    assert "non-finite loss or gradient" in message and "Traceback" not in result.stderr
    bad_step = int(message.split("Step ")[1].split(" ")[0])
    assert checkpoint_steps(tmp_path)[-1] == bad_step - 1
    assert f"last good checkpoint is step {bad_step - 1}" in message


def test_skip_nonfinite_steps_goes_on_and_counts_them(tmp_path):
    args = [TINY, "--fdl.optimizer.peak_learning_rate=1e30", "--fdl.optimizer.clip_norm=1e30"]
    result = launch(*args, "--fdl.trainer.skip_nonfinite_steps=True", f"--workdir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    series = scalars(tmp_path)
    assert series["train/skipped_steps"][20] > 0
    assert checkpoint_steps(tmp_path) == [10, 20]


def test_a_checkpoint_of_another_shape_is_refused_and_left_untouched(tmp_path):
    source = tmp_path / "source"
    assert launch(TINY, f"--workdir={source}").returncode == 0
    # A run directory whose config.json is gone: only the checkpoint can tell it is another model.
    target = tmp_path / "target"
    shutil.copytree(source / "checkpoints", target / "checkpoints")
    before = _tree_digest(target / "checkpoints")
    result = launch(TINY, "--fdl.model.config.embedding_dim=48", f"--workdir={target}")
    assert result.returncode == 1
    message = last_line(result.stderr)
    assert "params/" in message and "of shape (2, 32," in message and "needs (2, 48," in message, message
    assert "Traceback" not in result.stderr
    assert _tree_digest(target / "checkpoints") == before


def test_a_run_directory_under_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    result = launch(TINY, f"--workdir={tmp_path / 'file' / 'run'}")
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
