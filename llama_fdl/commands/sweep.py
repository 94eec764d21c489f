"""Run a sweep: `llama-fdl sweep --fdl_config=experiments.small --sweep=lr_small --workdir=runs/lr`.

Each point of the sweep (a function in experiments/sweeps.py returning llama_fdl.sweep.Point's)
runs into WORKDIR/<point> with its own config.json, config_diff.txt and config_diff.py, one after
another in this process, or --parallel=N at once as child processes (each logging to
WORKDIR/<point>/log.txt). Overrides on the command line (--fiddler, --fdl_tag., --fdl.) apply to
every point. Every point is checked before any runs. Running the same command again skips finished
points and resumes the others from their checkpoints. At the end WORKDIR/summary.md compares the
points; `tensorboard --logdir WORKDIR` shows them side by side (Scalars and HParams).
"""

from __future__ import annotations

import os
import pathlib
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from absl import app, flags

import experiments
from llama_fdl import commands, compilation_cache, runner, sweep
from llama_fdl.cli import ConfigError, overrides
from llama_fdl.cli import flags as fdl_flags
from llama_fdl.train import checkpoint as ckpt
from llama_fdl.train import preemption

_SWEEP = flags.DEFINE_string(
    "sweep", None, "The sweep: NAME or NAME(ARGS) of experiments/sweeps.py, or a dotted name elsewhere."
)
_PARALLEL = flags.DEFINE_integer(
    "parallel", 1, "Run this many points at once, each in its own process; 1 runs them here, in turn."
)
_SWEEP_POINT = flags.DEFINE_string(
    "sweep_point", None, "Run only this point, in this process (what --parallel's child processes get)."
)
FOR_PEOPLE = (ValueError, TypeError, FileNotFoundError, runner.RunError, ckpt.CheckpointWriteError)


def parse_flags(argv: list[str]) -> list[str]:
    return fdl_flags.parse(argv)


def main(argv: list[str], typed: Sequence[str]) -> None:
    """Plans every point, runs those not finished, and writes WORKDIR/summary.md."""
    commands.quiet_logs()
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}; flags take the form --name=value.")
    try:
        planned, workdir = _plan(typed)
        if _SWEEP_POINT.value is not None:
            sys.exit(_run_one(planned, workdir))
        if _PARALLEL.value > 1:
            outcomes = _run_in_children(planned, workdir, typed, _PARALLEL.value)
        else:
            outcomes = _run_here(planned, workdir)
        text = sweep.summary(
            planned,
            outcomes,
            title=f"{_SWEEP.value} over {fdl_flags.base_flag()}",
            command=shlex.join(["llama-fdl", "sweep", *typed]),
        )
        (workdir / "summary.md").write_text(text)
        print(f"\n{text}\n(saved as {workdir / 'summary.md'})", flush=True)
        if any(not isinstance(o, sweep.Result) for o in outcomes.values()):
            sys.exit(1)
    except FOR_PEOPLE as e:
        if fdl_flags.TRACEBACK.value:
            raise
        print(f"error: {runner.one_line(e)} (--traceback shows where)", file=sys.stderr)
        sys.exit(1)


def _plan(typed: Sequence[str]) -> tuple[list[sweep.Planned], pathlib.Path]:
    """Every point applied and checked, and the sweep's directory checked: before anything runs."""
    if not _SWEEP.value:
        known = ", ".join(experiments.sweeps.SWEEPS)
        raise ConfigError(f"Name a sweep: --sweep=experiments.sweeps.NAME; the library has {known}.")
    if _PARALLEL.value < 1:
        raise ConfigError(f"--parallel={_PARALLEL.value} must be at least 1.")
    points = sweep.points(_SWEEP.value, experiments.sweeps)
    base, against = fdl_flags.base_graph(experiments)
    todo = overrides.from_flags(
        fdl_flags.FIDDLER.value, fdl_flags.FDL_TAGS_SET.value, fdl_flags.FDL_SET.value, typed
    )
    planned = sweep.plan(base, todo, points, experiments, against, fdl_flags.base_flag())
    name = _SWEEP.value.split("(")[0].rsplit(".", 1)[-1]
    workdir = pathlib.Path(fdl_flags.WORKDIR.value or f"runs/{name}")
    sweep.check_workdirs(planned, workdir)
    if _SWEEP_POINT.value is not None and _SWEEP_POINT.value not in [p.point.name for p in planned]:
        names = ", ".join(p.point.name for p in planned)
        raise ConfigError(
            f"--sweep_point={_SWEEP_POINT.value} is not a point of this sweep; points: {names}."
        )
    return planned, workdir


def _options():
    from llama_fdl.train import loop  # TensorFlow: only once every point has passed its checks

    if fdl_flags.COMPILATION_CACHE.value:
        compilation_cache.enable(fdl_flags.COMPILATION_CACHE_DIR.value)
    return loop.RunOptions(), FOR_PEOPLE + (loop.NonFiniteLoss, ckpt.UnreadableCheckpoints)


def _stop_request() -> preemption.StopRequest:
    """SIGTERM/SIGINT recorded for the rest of this process, so that one arriving while a point
    sets up, saves or exits ends in a clean save, and one between points starts no other."""
    stop = preemption.StopRequest()
    stop.install()
    return stop


def _run_one(planned: list[sweep.Planned], workdir: pathlib.Path) -> int:
    """--sweep_point: one point here; exit status 0 when it finished or was stopped by a signal."""
    (p,) = [p for p in planned if p.point.name == _SWEEP_POINT.value]
    options, errors = _options()
    try:
        sweep.run_point(p, workdir, options, _stop_request())
    except errors as e:
        print(f"error: {runner.one_line(e)}", file=sys.stderr)
        return 1
    return 0


def _run_here(planned: list[sweep.Planned], workdir: pathlib.Path) -> dict[str, sweep.Result | str]:
    """The points in turn, in this process; a failed point is reported and the next one runs."""
    outcomes: dict[str, sweep.Result | str] = {}
    options, errors = _options()
    stop = _stop_request()
    for i, p in enumerate(planned, 1):
        name, head = p.point.name, f"[{i}/{len(planned)}] {p.point.name}"
        done = sweep.finished(p, workdir)
        if done is not None:
            print(f"{head}: finished before (eval loss {done.eval_loss:.4f}); skipping it.", flush=True)
            outcomes[name] = done
            continue
        if stop.signal_number:  # came between two points: start no other
            print(f"{head}: not started; run the same command again to resume the sweep.", flush=True)
            break
        print(f"\n{head}: {p.point.describe()}", flush=True)
        try:
            result = sweep.run_point(p, workdir, options, stop)
        except errors as e:
            outcomes[name] = f"failed: {runner.one_line(e)}"
            print(f"{head} failed: {runner.one_line(e)}", file=sys.stderr, flush=True)
            continue
        if result is None:
            outcomes[name] = "stopped before its last step"
            print(f"{head}: stopped; run the same command again to resume the sweep.", flush=True)
            break
        outcomes[name] = result
    return outcomes


def _run_in_children(
    planned: list[sweep.Planned], workdir: pathlib.Path, typed: Sequence[str], parallel: int
) -> dict[str, sweep.Result | str]:
    """Up to `parallel` points at once, each a `llama-fdl sweep --sweep_point=NAME` child process."""
    outcomes: dict[str, sweep.Result | str] = {}
    queue = []
    for p in planned:
        done = sweep.finished(p, workdir)
        if done is None:
            queue.append(p)
        else:
            outcomes[p.point.name] = done
            print(f"{p.point.name}: finished before (eval loss {done.eval_loss:.4f}); skipping it.")
    # The children import what this process imports, from the same places (a checkout or not).
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [*sys.path, os.environ.get("PYTHONPATH")]))
    )
    # Several processes on one GPU: without this, the first takes 75% of its memory at start-up.
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    running: dict[str, tuple[subprocess.Popen, sweep.Planned]] = {}
    stopping = []

    def forward(signum, frame):  # a scheduler's SIGTERM reaches the children, which save and exit
        stopping.append(signum)
        for proc, _ in running.values():
            proc.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        while (queue and not stopping) or running:
            while queue and not stopping and len(running) < parallel:
                p = queue.pop(0)
                log = workdir / p.point.name / "log.txt"
                log.parent.mkdir(parents=True, exist_ok=True)
                command = [
                    sys.executable,
                    "-m",
                    "llama_fdl",
                    "sweep",
                    *typed,
                    f"--sweep_point={p.point.name}",
                ]
                with log.open("a") as out:
                    proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
                running[p.point.name] = (proc, p)
                print(f"{p.point.name}: started ({p.point.describe()}); log: {log}", flush=True)
            for name, (proc, p) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[name]
                outcomes[name] = _outcome(p, workdir, proc.returncode)
                print(f"{name}: {_said(outcomes[name])}", flush=True)
            time.sleep(0.2)
    except KeyboardInterrupt:  # Ctrl-C reached the children too; let them save
        for proc, _ in running.values():
            proc.wait()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    return outcomes


def _outcome(p: sweep.Planned, workdir: pathlib.Path, returncode: int) -> sweep.Result | str:
    done = sweep.finished(p, workdir)
    if done is not None:
        return done
    if returncode == 0:
        return "stopped before its last step"
    lines = (workdir / p.point.name / "log.txt").read_text().strip().splitlines()
    return f"failed: {lines[-1] if lines else f'exit status {returncode}'}"


def _said(outcome: sweep.Result | str) -> str:
    return f"finished, eval loss {outcome.eval_loss:.4f}" if isinstance(outcome, sweep.Result) else outcome
