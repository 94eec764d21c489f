"""How long a launch takes to start: `experiments.tiny` end to end, and a finished run's rerun.

    python -m benchmarks.startup [--repeats=3] [--workdir=DIR]

Each repeat launches `python launch/launch.py --fdl_config=experiments.tiny` into a new run
directory (a fresh run: data set-up, compile, 20 steps, two evals, checkpoints) and then the same
command again (the run is finished: `Nothing to do`), timing both from outside the process.
Beside them, measured in the same loop, the floor any JAX launch pays: a Python process that
imports jax and runs one op. The ratios to that floor are what to compare across machines and
loads; the seconds are what a user waits on this one. The launch's own phase lines and its
`First step done ... after the launch` line are printed for the first repeat, and the lines a
verbose launch (LLAMA_FDL_VERBOSE=1) would have added are counted.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = [sys.executable, str(REPO / "launch" / "launch.py"), "--fdl_config=experiments.tiny"]
FLOOR = [sys.executable, "-c", "import jax, jax.numpy as jnp; jnp.zeros(1).block_until_ready()"]


def timed(command: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    """Wall seconds of `command` to its exit, and its stdout and stderr together."""
    start = time.perf_counter()
    proc = subprocess.run(
        command, capture_output=True, text=True, cwd=REPO, env={**os.environ, **(env or {})}
    )
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout + proc.stderr


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default=None, help="Where the run directories go (default: a temp dir).")
    parser.add_argument("--verbose_control", action="store_true", help="Also count a verbose launch's lines.")
    args = parser.parse_args(argv)
    root = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="llama_fdl_startup_"))
    fresh, finished, floor = [], [], []
    for i in range(args.repeats):
        workdir = root / f"tiny_{i}_{time.time_ns()}"
        seconds, output = timed([*LAUNCH, f"--workdir={workdir}"])
        fresh.append(seconds)
        if i == 0:
            print("first launch's output, less the step and sharding lines:")
            for line in output.splitlines():
                if not line.startswith(("step ", "block_stack", "embed", "final_norm", "lm_head")):
                    print(f"  | {line}")
        seconds, output = timed([*LAUNCH, f"--workdir={workdir}"])
        finished.append(seconds)
        if i == 0:
            print("the rerun's output:")
            print("\n".join(f"  | {line}" for line in output.splitlines()))
        floor.append(timed(FLOOR)[0])
    results = {
        "tiny_s": statistics.median(fresh),
        "nothing_to_do_s": statistics.median(finished),
        "floor_s": statistics.median(floor),
    }
    print(
        f"experiments.tiny end to end: {results['tiny_s']:.1f} s (median of {args.repeats}; "
        f"{results['tiny_s'] / results['floor_s']:.1f}x the floor)\n"
        f"a finished run's rerun (Nothing to do): {results['nothing_to_do_s']:.1f} s "
        f"({results['nothing_to_do_s'] / results['floor_s']:.1f}x the floor)\n"
        f"floor (python + import jax + one op): {results['floor_s']:.1f} s\n"
        f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    if args.verbose_control:
        _, quiet = timed([*LAUNCH, f"--workdir={root / 'quiet'}"])
        _, loud = timed([*LAUNCH, f"--workdir={root / 'verbose'}"], env={"LLAMA_FDL_VERBOSE": "1"})
        print(f"a verbose launch prints {len(loud.splitlines()) - len(quiet.splitlines())} more lines")
    return results


if __name__ == "__main__":
    main()
