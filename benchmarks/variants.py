"""llama_fdl's train step under config variants, beside HF's, interleaved in one process.

    taskset -c 1 python -m benchmarks.variants --shape=small remat=none remat=minimal scan_blocks=False

Each variant is a comma-separated list of LlamaConfig fields (`parallel.NAME` for a
ParallelConfig field), values as Python literals; `base` is the shape's config as it is. Rounds
alternate the variants and HF (the order reverses every round), each side's round starting with
one untimed step (`step_vs_hf.interleave`). Printed per variant: the medians of wall time and
of process CPU time per step, and HF's over it. Pinned to one core (`taskset -c 1`) the CPU-time
column is the comparison that load from other processes skews least; on all cores, wall time
also measures how well each side uses the threads.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import statistics

from benchmarks import shapes as shapes_lib
from benchmarks import step_vs_hf
from llama_fdl.model import ParallelConfig


def variant_fields(spec: str) -> dict[str, object]:
    """`"parallel.remat=none,scan_blocks=False"` -> LlamaConfig fields; `"base"` -> none."""
    if spec == "base":
        return {}
    fields: dict[str, object] = {}
    parallel: dict[str, object] = {}
    for item in spec.split(","):
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"variant item {item!r} is not NAME=VALUE (e.g. parallel.remat='none').")
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = value  # a bare word: a string
        if name.startswith("parallel."):
            parallel[name.removeprefix("parallel.")] = parsed
        else:
            fields[name] = parsed
    if parallel:
        fields["parallel"] = ParallelConfig(**parallel)
    return fields


def measure(
    shape: shapes_lib.Shape, specs: list[str], rounds: int, steps: int
) -> dict[str, dict[str, float]]:
    """Median wall and CPU seconds per step of each variant and of HF ("HF")."""
    runs = {}
    for spec in specs:
        variant = dataclasses.replace(
            shape, config_fields=shape.config_fields + tuple(variant_fields(spec).items())
        )
        runs[spec], _ = step_vs_hf.llama_fdl_step(variant)
    runs["HF"] = step_vs_hf.hf_step(shape)
    wall, cpu = step_vs_hf.interleave(runs, rounds, steps)
    return {
        name: {"wall": statistics.median(wall[name]), "cpu": statistics.median(cpu[name])} for name in runs
    }


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="small", help=f"one of {sorted(shapes_lib.SHAPES)} or toy")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("variants", nargs="+", help="'base' or NAME=VALUE[,NAME=VALUE...]")
    args = parser.parse_args(argv)
    shape = {**shapes_lib.SHAPES, "toy": shapes_lib.TOY}[args.shape]
    result = measure(shape, args.variants, args.rounds, args.steps)
    hf = result["HF"]
    print(f"{shape.name} ({shape.describe()}), {args.rounds} rounds of {args.steps} steps")
    print("| variant | wall ms/step | CPU ms/step | HF / this, wall | HF / this, CPU |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, t in result.items():
        print(
            f"| {name} | {t['wall'] * 1e3:.1f} | {t['cpu'] * 1e3:.1f} | "
            f"{hf['wall'] / t['wall']:.3f} | {hf['cpu'] / t['cpu']:.3f} |"
        )
    return result


if __name__ == "__main__":
    main()
