"""The data pipeline: packed batches for training, fixed eval sets, the launch-time check, and
global jax arrays.

Shapes: B = per-process batch, L = sequence length.

The train stream never ends and holds no shuffle buffer (see `llama_fdl.data.streams`), so the
tf.data iterator state that checkpoints save is counters, file names, the row being packed and
two prefetched batches, and a resumed run sees exactly the data an uninterrupted run would.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from llama_fdl.data import packing, streams
from llama_fdl.data.config import DataConfig
from llama_fdl.data.quiet_import import quiet_stderr, seqio, tf
from llama_fdl.data.sources import DataError, Mixture, Source

FEATURES = packing.FEATURES


@dataclasses.dataclass
class EvalSet:
    """Fixed evaluation batches of one validation stream, logged under `prefix`."""

    prefix: str
    """`eval/` for the source, `eval/<component>/` for each component of a mixture."""
    batches: list[dict[str, np.ndarray]]
    """This process's rows of each batch."""


def local_batch_size(config: DataConfig, num_shards: int | None = None) -> int:
    """One process's share of the global batch (of `num_shards` processes, default: this run's)."""
    n = jax.process_count() if num_shards is None else num_shards
    if config.batch_size % n:
        raise ValueError(
            f"data.batch_size={config.batch_size} is not divisible by the {n} processes; "
            f"use a multiple of {n}."
        )
    return config.batch_size // n


def _this_shard() -> seqio.ShardInfo:
    return seqio.ShardInfo(index=jax.process_index(), num_shards=jax.process_count())


def packed_dataset(
    config: DataConfig,
    split: str,
    shard: seqio.ShardInfo | None = None,
    source: Source | Mixture | None = None,
) -> tf.data.Dataset:
    """Packed, batched examples of `split` for this process (its own shard of the data).

    `shard` defaults to this process's; naming another lets one process read what process
    `shard.index` of `shard.num_shards` would, batched as that process would batch it. `source`
    defaults to `config.source` (a mixture's component, to evaluate it alone).
    """
    streams.import_modules(config.modules)
    shard = shard or _this_shard()
    source = config.source if source is None else source
    vocabulary = config.vocabulary.seqio()
    chunks = streams.chunk_stream(source, split, shard, vocabulary, config.sequence_length, config.seed)
    rows = packing.pack(chunks, config.sequence_length, finite=split != "train")
    batches = rows.map(packing.features).batch(
        local_batch_size(config, shard.num_shards), drop_remainder=True
    )
    options = tf.data.Options()
    # tf.data would otherwise add prefetch buffers and parallel maps of its own, and a
    # checkpoint of the iterator would hold what they had buffered.
    options.experimental_optimization.inject_prefetch = False
    options.experimental_optimization.map_parallelization = False
    # Reading a text segment by offset runs a one-element dataset inside a map, an op tf.data calls
    # stateful; it reads the same bytes again on restore, so there is no state to lose.
    options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
    return batches.with_options(options)


def train_iterator(config: DataConfig):
    """The train stream as a checkpointable tf.data iterator of dicts of tf tensors."""
    return iter(packed_dataset(config, "train").prefetch(2))


def next_batch(iterator) -> dict:
    """The iterator's next batch; a bad document met on the way is a DataError naming it."""
    try:
        return next(iterator)
    except tf.errors.OpError as e:
        raise _data_error(e) from None


def eval_sets(config: DataConfig) -> list[EvalSet]:
    """The fixed evaluation batches, as numpy: the source's, then each mixture component's."""
    streams.import_modules(config.modules)
    wanted = [("eval/", None)]
    wanted += [(f"eval/{c.name}/", c.source) for c in streams.components(config.source)]
    sets = []
    for prefix, source in wanted:
        ds = packed_dataset(config, "validation", source=source).take(config.num_eval_batches)
        try:
            batches = list(ds.as_numpy_iterator())
        except tf.errors.OpError as e:
            raise _data_error(e) from None
        if len(batches) < config.num_eval_batches:
            what = "the validation split" + (f" of component {prefix[5:-1]!r}" if source else "")
            fix = (
                f"lower data.num_eval_batches to at most {len(batches)}"
                if batches
                else "lower data.sequence_length or data.batch_size"
            )
            raise DataError(
                f"data.num_eval_batches={config.num_eval_batches} batches of {config.batch_size}x"
                f"{config.sequence_length} tokens do not fit in {what}, which fills {len(batches)}; {fix}."
            )
        sets.append(EvalSet(prefix, batches))
    return sets


def check(config: DataConfig) -> None:
    """Everything about the data that can be wrong, checked once per launch before any compile.

    Imports `data.module`, resolves the source (globs, seqio names, the Task's vocabulary), and
    reads the fixed eval sets and the first train batch: the eval sets must fit in the
    validation splits, and a bad document among what was read is named. A bad JSONL line
    deeper in the train files is named when training reaches it (the run stops there).

    Library chatter on stderr is held back (`quiet_stderr`), so a bad setting reads as one line;
    the loop builds these pipelines again, where any warning shows.
    """
    with quiet_stderr():
        eval_sets(config)
        ds = packed_dataset(config, "train")
        next_batch(iter(ds))


def to_global(batch: dict, sharding: jax.sharding.Sharding) -> dict[str, jax.Array]:
    """Assembles each process's local rows into one global array per feature."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(batch[k])) for k in FEATURES}


def _data_error(error: tf.errors.OpError) -> Exception:
    message = streams.bad_document(error)
    if message is None:
        return error
    return DataError(f"{message}; fix or remove that line.")
