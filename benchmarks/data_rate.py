"""Tokens/s of the data pipeline (seqio, packing, global arrays), to set beside the step's.

The train iterator of `experiments.small`'s data (the stdlib corpus, 16 x 256) is read as the
loop reads it: next batch, then assembled into global jax arrays. If it delivers many times the
step's tokens/s, the data never makes the step wait. Run `python -m benchmarks.data_rate --help`.
"""

from __future__ import annotations

import argparse
import time

import jax

from llama_fdl import sharding
from llama_fdl.data.config import DataConfig
from llama_fdl.model import ParallelConfig


def tokens_per_second(batch_size: int = 16, sequence_length: int = 256, batches: int = 50) -> float:
    """Tokens/s of the train iterator after its first batch (which pays for start-up)."""
    from llama_fdl.data import pipeline  # imports TensorFlow: seconds, paid only here

    config = DataConfig(batch_size=batch_size, sequence_length=sequence_length)
    batch_sh = sharding.batch_sharding(sharding.build_mesh(ParallelConfig()), ParallelConfig())
    iterator = pipeline.train_iterator(config)
    jax.block_until_ready(pipeline.to_global(next(iterator), batch_sh))
    start = time.perf_counter()
    for _ in range(batches):
        jax.block_until_ready(pipeline.to_global(next(iterator), batch_sh))
    return batches * batch_size * sequence_length / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=50)
    args = parser.parse_args(argv)
    rate = tokens_per_second(batches=args.batches)
    print(f"data pipeline (stdlib corpus, 16 x 256): {rate:,.0f} tokens/s")
    return rate


if __name__ == "__main__":
    main()
