"""Peak resident memory of a process that trains a few steps, llama_fdl against HF transformers.

Each side runs in a fresh child process (imports, model, optimizer, one warm-up and three steps)
so that its peak resident set is its own (the kernel's `VmHWM` of the child's address space: not
`ru_maxrss`, which a child inherits from a large parent across fork and exec, so that every
figure read the parent's peak when `benchmarks.run` had trained the 58M shape before); the
memory a process has before it
builds anything (the interpreter and the imported libraries) is reported beside it. For
llama_fdl, XLA's own estimate of the step (the dry run's) is shown too.
Run `python -m benchmarks.memory --help`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from benchmarks import shapes as shapes_lib

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def peak_rss_bytes() -> int:
    """This process's peak resident set since it was exec'd (Linux's VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no VmHWM line: peak memory is measured on Linux only.")


def _child(side: str, shape_name: str) -> None:
    """In the child: build one side, step it, print its memory as one JSON line."""
    from benchmarks import step_vs_hf

    shape = {**shapes_lib.SHAPES, "toy": shapes_lib.TOY}[shape_name]
    before = peak_rss_bytes()
    estimate = None
    if side == "llama_fdl":
        run, _ = step_vs_hf.llama_fdl_step(shape)
        from llama_fdl import optim, sharding
        from llama_fdl.model import LlamaTransformer
        from llama_fdl.train import aot

        config = shape.llama_config()
        tx, schedule = optim.adamw(10**6, warmup_steps=0)
        report = aot.dry_run(
            LlamaTransformer(config),
            tx,
            schedule,
            sharding.build_mesh(config.parallel),
            batch_size=shape.batch_size,
            sequence_length=shape.sequence_length,
        )
        estimate = report.peak_bytes
    else:
        run = step_vs_hf.hf_step(shape)
    for _ in range(4):
        run()
    peak = peak_rss_bytes()
    print(json.dumps({"before_bytes": before, "peak_bytes": peak, "xla_estimate_bytes": estimate}))


def measure(side: str, shape_name: str) -> dict:
    """Runs one side in a fresh process; returns its memory figures."""
    env = {**os.environ, "PYTHONPATH": _REPO}
    code = f"from benchmarks import memory; memory._child({side!r}, {shape_name!r})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=_REPO)
    if proc.returncode:
        raise RuntimeError(f"the {side} child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(shape_names: list[str]) -> str:
    mib = lambda n: f"{n / 2**20:,.0f} MiB"  # noqa: E731
    lines = [
        "| shape | llama_fdl peak RSS (before building) | XLA's estimate of the step | "
        "HF peak RSS (before building) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name in shape_names:
        fdl, hf = measure("llama_fdl", name), measure("hf", name)
        lines.append(
            f"| {name} | {mib(fdl['peak_bytes'])} ({mib(fdl['before_bytes'])}) | "
            f"{mib(fdl['xla_estimate_bytes'])} | {mib(hf['peak_bytes'])} ({mib(hf['before_bytes'])}) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="small,58M")
    args = parser.parse_args(argv)
    text = table(args.shapes.split(","))
    print(text)
    return text


if __name__ == "__main__":
    main()
