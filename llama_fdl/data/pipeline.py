"""seqio pipeline: the stdlib byte-level Task, packed batches, and global jax arrays.

Shapes: B = per-process batch, L = sequence length.

The train stream never ends and never materializes a shuffle buffer: example i of the stream is
chunk `index_shuffle(i mod n, seed, epoch)`, a stateless permutation per epoch. So the tf.data
iterator state that checkpoints save is a few counters, and a resumed run sees exactly the data
an uninterrupted run would.
"""

from __future__ import annotations

import functools
import pathlib
import zlib

import jax
import numpy as np

from llama_fdl import console
from llama_fdl.data import corpus
from llama_fdl.data.config import BYTE_VOCAB_SIZE, DataConfig

# TensorFlow's C++ libraries print a start-up banner (and, without a GPU, a cuInit "error") on
# descriptor 2, which no setting reaches: see llama_fdl/console.py.
with console.quiet_stderr():
    import seqio
    import tensorflow as tf

    # seqio is the data path's only TensorFlow user; keep TF off the accelerators.
    tf.config.set_visible_devices([], "GPU")

FEATURES = (
    "decoder_input_tokens",
    "decoder_target_tokens",
    "decoder_loss_weights",
    "decoder_segment_ids",
    "decoder_positions",
)


def _stream(root: pathlib.Path, max_bytes: int, split: str, shuffle_files: bool, seed: int | None = None):
    """A dataset of {"text": chunk}; train is an endless per-epoch permutation, eval one pass.

    `shuffle_files` is ignored: the train order is always the seeded permutation, so that seqio
    never needs a shuffle buffer (which would bloat every iterator checkpoint).
    """
    del shuffle_files
    chunks = corpus.load_chunks(root, split, max_bytes)
    table = tf.constant(chunks, dtype=tf.string)
    if split != "train":
        return tf.data.Dataset.from_tensor_slices({"text": table})
    n = len(chunks)
    base_seed = 0 if seed is None else int(seed)

    def pick(i):
        epoch, offset = i // n, i % n
        index = tf.random.experimental.index_shuffle(
            offset,
            seed=tf.stack([tf.constant(base_seed, tf.int64), epoch]),
            max_index=n - 1,
        )
        return {"text": tf.gather(table, index)}

    return tf.data.Dataset.range(np.iinfo(np.int64).max).map(pick)


def vocabulary() -> seqio.Vocabulary:
    vocab = seqio.ByteVocabulary()
    assert vocab.vocab_size == BYTE_VOCAB_SIZE, vocab.vocab_size
    return vocab


def task_name(config: DataConfig) -> str:
    """A registry name unique to the corpus and chunk size, so configs never collide."""
    tag = zlib.crc32(str(config.root.resolve()).encode())
    return f"llama_fdl_pybytes_{tag}_chunk{config.sequence_length - 1}"


def register_task(config: DataConfig) -> str:
    """Registers (once) the seqio Task for `config` and returns its name."""
    name = task_name(config)
    if name in seqio.TaskRegistry.names():
        return name
    # Chunks leave room for the EOS that seqio appends, so packing never truncates text.
    source = seqio.FunctionDataSource(
        dataset_fn=functools.partial(_stream, config.root, config.sequence_length - 1),
        splits=corpus.SPLITS,
    )
    seqio.TaskRegistry.add(
        name,
        source=source,
        preprocessors=[
            functools.partial(seqio.preprocessors.rekey, key_map={"targets": "text"}),
            functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
            seqio.preprocessors.append_eos,
        ],
        output_features={"targets": seqio.Feature(vocabulary(), add_eos=True, dtype=tf.int32)},
    )
    return name


def local_batch_size(config: DataConfig, num_shards: int | None = None) -> int:
    """One process's share of the global batch (of `num_shards` processes, default: this run's)."""
    n = jax.process_count() if num_shards is None else num_shards
    if config.batch_size % n:
        raise ValueError(
            f"data.batch_size={config.batch_size} is not divisible by the {n} processes; "
            f"use a multiple of {n}."
        )
    return config.batch_size // n


def packed_dataset(config: DataConfig, split: str, shard: seqio.ShardInfo | None = None) -> tf.data.Dataset:
    """Packed, batched examples of `split` for this process (its own shard of the data).

    `shard` defaults to this process's; naming another lets one process read what process
    `shard.index` of `shard.num_shards` would, batched as that process would batch it.
    """
    name = register_task(config)
    if shard is None:
        shard = seqio.ShardInfo(index=jax.process_index(), num_shards=jax.process_count())
    ds = seqio.get_dataset(
        name,
        task_feature_lengths={"targets": config.sequence_length},
        dataset_split=split,
        shuffle=False,
        num_epochs=1,
        shard_info=shard,
        feature_converter=seqio.DecoderFeatureConverter(pack=True),
        seed=config.seed,
        use_cached=False,
    )
    return ds.batch(local_batch_size(config, shard.num_shards), drop_remainder=True)


def train_iterator(config: DataConfig):
    """The train stream as a checkpointable tf.data iterator of dicts of tf tensors."""
    return iter(packed_dataset(config, "train").prefetch(2))


def eval_batches(config: DataConfig) -> list[dict[str, np.ndarray]]:
    """The fixed evaluation batches, as numpy, loaded once."""
    batches = list(packed_dataset(config, "validation").take(config.num_eval_batches).as_numpy_iterator())
    if len(batches) < config.num_eval_batches:
        raise ValueError(
            f"The validation split yields only {len(batches)} batches of {config.batch_size}x"
            f"{config.sequence_length}; lower data.num_eval_batches to at most {len(batches)}."
        )
    return batches


def to_global(batch: dict, sharding: jax.sharding.Sharding) -> dict[str, jax.Array]:
    """Assembles each process's local rows into one global array per feature."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(batch[k])) for k in FEATURES}
