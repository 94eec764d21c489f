"""Helpers for tests that drive the real launcher in subprocesses and read the real outputs."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

from tensorboard.backend.event_processing import event_accumulator

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = [sys.executable, str(REPO / "launch" / "launch.py")]


def launch(*args: str, timeout: int = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The launcher to the end; `env` adds variables (e.g. XLA_FLAGS for more CPU devices)."""
    return subprocess.run(
        [*LAUNCH, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


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
