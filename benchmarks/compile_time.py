"""Compile time of the train step against depth, with the blocks scanned and unrolled.

With `scan_blocks=True` the blocks are one `nn.scan` body that XLA compiles once, so compile time
should not grow with depth (the target: 32 blocks within 1.3x of 2); unrolled, every block is
compiled separately. The persistent compilation cache is off here, so every program compiles.
Run `python -m benchmarks.compile_time --help`.
"""

from __future__ import annotations

import argparse
import dataclasses

import jax

from benchmarks import shapes as shapes_lib
from llama_fdl import optim, sharding
from llama_fdl.model import LlamaTransformer
from llama_fdl.train import aot


def compile_seconds(shape: shapes_lib.Shape, num_blocks: int, scan_blocks: bool) -> tuple[float, float]:
    """Seconds to trace and to compile the train step of `shape` with `num_blocks` blocks."""
    config = dataclasses.replace(shape, num_blocks=num_blocks).llama_config(scan_blocks=scan_blocks)
    model = LlamaTransformer(config)
    mesh = sharding.build_mesh(config.parallel)
    tx, schedule = optim.adamw(10**6, warmup_steps=0)
    compiled = aot.compile_train_step(
        model, tx, schedule, mesh, batch_size=shape.batch_size, sequence_length=shape.sequence_length
    )
    return compiled.trace_seconds, compiled.seconds


def table(shape: shapes_lib.Shape, depths: list[int]) -> str:
    """Markdown: compile (and trace) seconds per depth, scanned and unrolled, and the ratio to depth 2."""
    jax.config.update("jax_enable_compilation_cache", False)
    rows = {}
    for scan in (True, False):
        for depth in depths:
            rows[scan, depth] = compile_seconds(shape, depth, scan)
    lines = [
        f"| blocks | scanned: compile s (trace s) | vs {depths[0]} blocks | unrolled: compile s (trace s) |",
        "| ---: | ---: | ---: | ---: |",
    ]
    base = rows[True, depths[0]][1]
    for depth in depths:
        (st, sc), (ut, uc) = rows[True, depth], rows[False, depth]
        lines.append(f"| {depth} | {sc:.2f} ({st:.2f}) | {sc / base:.2f}x | {uc:.2f} ({ut:.2f}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="small", help="width and batch: a name of benchmarks.shapes")
    parser.add_argument("--depths", default="2,8,32")
    args = parser.parse_args(argv)
    shape = {**shapes_lib.SHAPES, "toy": shapes_lib.TOY}[args.shape]
    text = table(shape, [int(d) for d in args.depths.split(",")])
    print(f"{shape.name}: {shape.describe()} (depth varies)\n{text}")
    return text


if __name__ == "__main__":
    main()
