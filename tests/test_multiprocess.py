"""Two processes on 127.0.0.1 (gloo CPU collectives) through the real launcher, and how they start.

The 2-process run trains experiments.tiny via launch/local.py and is preempted as a scheduler
would do it: SIGTERM to process 1, and a second later to process 0. Both must stop on the same
step, save it once, and exit 0 within a bounded time; the same command then resumes to the end.
Each process reads its own seqio shard (4 of the 8 rows), so the single-process reference reads
the same two shards and puts their rows side by side, as `jax.make_array_from_process_local_data`
must; its losses are computed here on one device. Tolerance, fixed in advance: rtol 1e-5 on
every logged loss, of the steps before the stop and after the resume alike.
Control: batches in which both halves come from shard 0 (processes ignoring their ShardInfo)
fail the same check. (A plain one-process run is no control: tiny's rows are single 63-byte
chunks, so the two shards' rows are the unsharded batch's rows in another order, same loss.)
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from launcher import checkpoint_steps
from tensorboard.backend.event_processing import event_accumulator

from llama_fdl import distributed, run_lock

REPO = pathlib.Path(__file__).resolve().parents[1]
LOCAL = [sys.executable, str(REPO / "launch" / "local.py")]
NUM_STEPS = 60
OVERRIDES = {
    "trainer.num_train_steps": NUM_STEPS,
    "trainer.log_every": 1,
    "trainer.eval_every": NUM_STEPS,
    "trainer.checkpoint.every_steps": NUM_STEPS,
}
LOSS_RTOL = 1e-5
EXIT_WITHIN_S = 120
"""From the first SIGTERM to both processes gone: seconds on a quiet machine, 27 s measured with
the 2-core machine loaded 6-fold; the failure this catches is a hang that lasts until JAX's own
timeout, minutes."""


# --- Where jax.distributed gets its settings (no processes started) -----------------------


def test_flags_win_and_one_process_needs_no_initialisation():
    plan = distributed.plan("auto", "10.0.0.1:1234", 4, 3, env={"JAX_NUM_PROCESSES": "9"})
    assert plan.kwargs == {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3}
    assert distributed.plan("auto", None, None, None, env={}).kwargs is None
    assert distributed.plan("auto", "h:1", 1, 0, env={}).kwargs is None


def test_environment_and_slurm_are_detected():
    env = {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
    assert distributed.plan("auto", None, None, None, env).kwargs["process_id"] == 1
    srun = {"SLURM_JOB_ID": "7", "SLURM_STEP_NUM_TASKS": "16", "SLURM_NTASKS": "16", "SLURM_PROCID": "3"}
    assert distributed.plan("auto", None, None, None, srun).kwargs == {}  # jax reads SLURM itself
    batch_script = {**srun, "SLURM_STEP_NUM_TASKS": "1"}  # python run by sbatch itself, not srun
    assert distributed.plan("auto", None, None, None, batch_script).kwargs is None
    assert distributed.plan("off", None, None, None, srun).kwargs is None
    assert distributed.plan("on", None, None, None, {}).kwargs == {}  # TPU pods: jax detects


@pytest.mark.parametrize(
    "args, expected",
    [
        (("h:1", 2, None), "--process_id"),
        (("h:1", 2, 2), "0 .. num_processes - 1 = 1"),
        (("nohostport", 2, 0), "host:port"),
    ],
)
def test_incomplete_or_wrong_settings_are_one_clear_sentence(args, expected):
    with pytest.raises(ValueError, match=expected):
        distributed.plan("auto", *args, env={})


# --- The real thing ------------------------------------------------------------------------


def _reference_losses() -> dict[str, list[float]]:
    """One process, one device, the batches two processes assemble; and a control's batches.

    "reference": shard 0's 4 rows then shard 1's, as make_array_from_process_local_data must put
    them. "same_shard": shard 0's rows twice, what processes that ignored their ShardInfo
    would train on (its first steps suffice).
    """
    import functools

    import fiddle as fdl
    import jax
    import seqio

    import experiments
    from llama_fdl.data import pipeline
    from llama_fdl.train import state as state_lib
    from llama_fdl.train.step import train_step

    cfg = experiments.tiny()
    for path, value in OVERRIDES.items():
        *parents, leaf = path.split(".")
        setattr(functools.reduce(getattr, parents, cfg), leaf, value)
    exp = fdl.build(cfg)
    tx, schedule = exp.optimizer(NUM_STEPS)
    parallel = exp.model.config.parallel
    initial, _ = state_lib.init_state(
        exp.model, tx, exp.data.sequence_length, exp.trainer.seed, exp.mesh, parallel
    )
    step = jax.jit(functools.partial(train_step, model=exp.model, tx=tx, schedule=schedule, mesh=exp.mesh))
    shard_batches = [
        list(
            pipeline.packed_dataset(exp.data, "train", seqio.ShardInfo(i, 2))
            .take(NUM_STEPS)
            .as_numpy_iterator()
        )
        for i in range(2)
    ]
    losses = {}
    for name, order, steps in (("reference", (0, 1), NUM_STEPS), ("same_shard", (0, 0), 6)):
        state, losses[name] = initial, []
        for t in range(steps):
            batch = {k: np.concatenate([shard_batches[i][t][k] for i in order]) for k in pipeline.FEATURES}
            state, metrics = step(state, batch)
            losses[name].append(float(metrics["train/loss"]))
    return losses


def _children(pid: int) -> dict[int, int]:
    """process_id -> pid of the launch.py processes that launch/local.py (`pid`) started."""
    found = {}
    children = pathlib.Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    for child in map(int, children):
        cmdline = pathlib.Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        ids = [a for a in cmdline if a.startswith(b"--process_id=")]
        if ids:
            found[int(ids[0].split(b"=")[1])] = child
    return found


def _local(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [*LOCAL, "--num_processes=2", "--", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """A 2-process run preempted by SIGTERMs a second apart, then resumed to the end."""
    workdir = tmp_path_factory.mktemp("mp") / "tiny"
    args = ["--fdl_config=experiments.tiny", f"--workdir={workdir}"]
    args += [f"--fdl.{path}={value}" for path, value in OVERRIDES.items()]
    proc = _local(args)
    out = ""
    while "step      1/" not in out and proc.poll() is None:
        out += proc.stdout.readline()
    pids = _children(proc.pid)
    holder = run_lock.read_holder(workdir / "lock")
    preempted_at = time.monotonic()
    os.kill(pids[1], signal.SIGTERM)
    time.sleep(1.0)
    # Process 0 may have saved and exited already: the stop was agreed on without its own signal.
    with contextlib.suppress(ProcessLookupError):
        os.kill(pids[0], signal.SIGTERM)
    try:
        rest, err = proc.communicate(timeout=EXIT_WITHIN_S)
    except subprocess.TimeoutExpired:
        for pid in pids.values():  # stuck in a collective the other process never joins
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.kill()
        proc.communicate()
        pytest.fail(f"the preempted processes did not exit within {EXIT_WITHIN_S} s of the first SIGTERM")
    preempted = {
        "out": out + rest,
        "returncode": proc.returncode,
        "exit_s": time.monotonic() - preempted_at,
        "lock_holder": holder.pid if holder else None,
        "pids": pids,
        "steps": checkpoint_steps(workdir),
        "err": err,
    }
    # The reference needs no devices beyond this process's one: compute it while they resume.
    resumed = _local(args)
    reference = _reference_losses()
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-4000:]
    return workdir, preempted, out, reference


def test_sigterms_a_second_apart_stop_both_processes_on_one_step_saved_once(two_process_run):
    workdir, preempted, _, _ = two_process_run
    assert preempted["returncode"] == 0, preempted["err"][-4000:]
    assert preempted["exit_s"] < EXIT_WITHIN_S, preempted["exit_s"]
    (step,) = preempted["steps"]  # one checkpoint: the preemption's, not one per process
    assert 1 < step < NUM_STEPS, preempted["steps"]
    assert f"SIGTERM: saved the checkpoint at step {step}; rerun to resume." in preempted["out"]
    assert (workdir / "process_1.log").exists()  # moved in: the run made the directory
    # Process 0 held the run directory's lock while it ran, and released it at the end.
    assert preempted["lock_holder"] == preempted["pids"][0]


def test_the_same_command_resumes_with_the_uninterrupted_losses(two_process_run):
    workdir, preempted, out, reference = two_process_run
    (step,) = preempted["steps"]
    assert f"from the checkpoint at step {step}" in out
    assert not (workdir / "lock").exists()
    # TensorBoard's own loader: each step once, losses of the first run up to the stop and of the
    # resumed run after it.
    acc = event_accumulator.EventAccumulator(str(workdir), size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    logged = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    assert [s for s, _ in logged] == list(range(1, NUM_STEPS + 1))
    losses = np.array([v for _, v in logged])
    np.testing.assert_allclose(losses, reference["reference"], rtol=LOSS_RTOL)
    # Control: had both processes read the same shard, the same check would fail.
    control = np.array(reference["same_shard"])
    assert np.max(np.abs(losses[: len(control)] - control) / np.abs(control)) > LOSS_RTOL


def test_only_process_0_writes_and_checkpoints_hold_every_process(two_process_run):
    workdir, _, out, _ = two_process_run
    assert "mesh: data=2 x fsdp=1 x tensor=1 (2 devices, 2 processes)" in out
    assert (workdir / "sharding.txt").read_text().startswith("mesh: data=2")
    assert len(list(workdir.glob("events.out.tfevents.*"))) == 2  # the preempted run's, the resumed one's
    for step in checkpoint_steps(workdir):
        data = workdir / "checkpoints" / str(step) / "data"
        assert {p.name for p in data.glob("process_*.index")} == {"process_0.index", "process_1.index"}


def test_process_0s_stream_leaves_out_gloos_connection_lines(two_process_run):
    workdir, preempted, _, _ = two_process_run
    assert "[Gloo]" not in preempted["out"] + preempted["err"]
    assert "[Gloo]" in (workdir / "process_1.log").read_text()  # control: the processes print them


def test_local_launcher_fails_when_a_process_fails(tmp_path):
    result = subprocess.run(
        [*LOCAL, "--num_processes=2", "--", "--fdl_config=experiments.nope", f"--workdir={tmp_path / 'r'}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode != 0
    assert "Unknown experiment 'experiments.nope'" in result.stderr
    assert not (tmp_path / "r").exists()  # a refused launch leaves no process_1.log behind
