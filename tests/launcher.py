"""Helpers for tests that drive the real launcher in subprocesses and read the real outputs."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import conftest
from tensorboard.backend.event_processing import event_accumulator

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = [sys.executable, str(REPO / "launch" / "launch.py")]


def launch(*args: str, timeout: int = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The launcher to the end; `env` adds variables (e.g. XLA_FLAGS for more CPU devices, which
    go after this process's: conftest.xla_flags)."""
    added = dict(env or {})
    if "XLA_FLAGS" in added:
        added["XLA_FLAGS"] = conftest.xla_flags(added["XLA_FLAGS"])
    return subprocess.run(
        [*LAUNCH, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, **added},
    )


def launch_here(*args: str) -> subprocess.CompletedProcess:
    """`launch/launch.py ARGS` in this process: the launcher's own flag parsing, checks, run and
    error printing (llama_fdl.commands.train), its exit status taken from SystemExit and its
    stdout and stderr captured, without a new process's start-up (most of a tiny launch's
    time). For tests whose point is what the launcher does with an input or an error, not the
    process boundary; signals, absl's app.run and the console script keep `launch`. An error the
    launcher does not catch propagates, failing the test as a traceback in `launch` would."""
    import contextlib
    import io
    import signal

    import jax
    from absl import flags

    from llama_fdl.commands import train

    flags.FLAGS.unparse_flags()  # every flag at its default: nothing carries over from another call
    # The launcher takes over SIGTERM/SIGINT and turns on JAX's persistent compilation cache for
    # the rest of its process; this process gets its own back afterwards.
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    jax_settings = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    saved = {name: getattr(jax.config, name) for name in jax_settings}
    out, err = io.StringIO(), io.StringIO()
    returncode = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                train.main(train.parse_flags(["launch.py", *args]), list(args))
            except SystemExit as e:
                if isinstance(e.code, str):  # sys.exit("message") prints it and exits 1
                    print(e.code, file=sys.stderr)
                returncode = 1 if isinstance(e.code, str) else (e.code or 0)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        for name, value in saved.items():
            jax.config.update(name, value)
        flags.FLAGS.unparse_flags()
    return subprocess.CompletedProcess(["launch.py", *args], returncode, out.getvalue(), err.getvalue())


def run_here(workdir: pathlib.Path, **settings) -> dict[str, float]:
    """experiments.tiny with `settings` (dotted path -> value) run by `llama_fdl.runner.run` in this
    process: what the launcher runs, without a new process's start-up (JAX, TensorFlow, seqio:
    most of a tiny launch's time), for tests whose point is not the process boundary. Returns
    the final eval metrics; errors propagate as the launcher would catch them."""
    import functools

    import experiments
    from llama_fdl import runner

    cfg = experiments.tiny()
    for path, value in settings.items():
        *parents, leaf = path.split(".")
        setattr(functools.reduce(getattr, parents, cfg), leaf, value)
    return runner.run(cfg, workdir)


def start(*args: str) -> subprocess.Popen:
    """The launcher in the background, stdout and stderr merged."""
    return subprocess.Popen(
        [*LAUNCH, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def scalars(logdir: pathlib.Path) -> dict[str, dict[int, float]]:
    """Every scalar series in `logdir`, read back by TensorBoard's own loader."""
    acc = event_accumulator.EventAccumulator(str(logdir), size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def accumulator(logdir: pathlib.Path) -> event_accumulator.EventAccumulator:
    acc = event_accumulator.EventAccumulator(str(logdir), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    return acc


def checkpoint_steps(workdir: pathlib.Path) -> list[int]:
    """Complete checkpoints only: Orbax renames a step's directory to its number when done."""
    ckpt = workdir / "checkpoints"
    return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) if ckpt.exists() else []


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1] if text.strip() else ""
