"""Streams of token chunks from each kind of source, read with tf.data and mixed at rates.

A chunk is `{"tokens": [L] int32, "length": int32}`: up to L = sequence_length consecutive
tokens of one document, zero-padded. A document's tokens end with EOS and are cut into chunks of
L, so seqio's rule that an example longer than the sequence is truncated never drops text.

Files are streamed, never read whole into memory at once. Validation reads its files in order.
The train stream of text files visits segments of all files in a seeded order per epoch, read by
offset (`llama_fdl.data.segments`); that of JSONL files visits the files in a seeded permutation
per epoch (`index_shuffle`, stateless) and reads `CYCLE_LENGTH` of them at a time, one chunk from
each in turn (`interleave`). A text file is one document; a JSONL line is one document. Nothing
here buffers examples to shuffle them: a tf.data checkpoint of these streams holds counters, the
names of the files being read and the JSONL line being chunked, whatever the corpus size.
"""

from __future__ import annotations

import difflib
import importlib
import json
import re
import zlib

import numpy as np

from llama_fdl.data import segments
from llama_fdl.data.quiet_import import seqio, tf
from llama_fdl.data.sources import (
    Component,
    DataError,
    FileSource,
    JsonlFiles,
    Mixture,
    SeqioTask,
    Source,
    files_of,
    shard_files,
)

CYCLE_LENGTH = 16
"""JSONL files the train stream reads at once, taking one chunk from each in turn."""

_BAD_DOCUMENT = "llama_fdl bad document: "

# tf.data converts dataset functions with autograph, which takes seconds on first use; these are
# plain tensor code and need none of it.
_plain = tf.autograph.experimental.do_not_convert


def import_modules(modules: tuple[str, ...]) -> None:
    """Imports each of `modules` (what registers seqio Tasks); raises DataError naming the one that fails."""
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 -- whatever the module raises, say which module
            raise DataError(f"data.module {name!r} failed to import: {type(e).__name__}: {e}") from e


def provider(name: str) -> seqio.Task | seqio.Mixture:
    """The registered seqio Task or Mixture `name`; raises DataError with the nearest names."""
    tasks, mixtures = list(seqio.TaskRegistry.names()), list(seqio.MixtureRegistry.names())
    if name in mixtures:
        return seqio.MixtureRegistry.get(name)
    if name in tasks:
        return seqio.TaskRegistry.get(name)
    near = difflib.get_close_matches(name, tasks + mixtures, n=3, cutoff=0.5)
    hint = f"nearest: {', '.join(near)}" if near else f"{len(tasks)} Tasks and {len(mixtures)} Mixtures"
    raise DataError(
        f"No seqio Task or Mixture is registered as {name!r} ({hint}); set data.module to the module "
        f"that registers it."
    )


def components(source: Source | Mixture) -> list[Component]:
    """The parts a source mixes, each evaluated on its own: a Mixture's, a seqio Mixture's Tasks."""
    if isinstance(source, Mixture):
        return list(source.components)
    if isinstance(source, SeqioTask) and isinstance(mixture := provider(source.name), seqio.Mixture):
        return [Component(t.name, SeqioTask(t.name), float(mixture.get_rate(t))) for t in mixture.tasks]
    return []


def chunk_stream(
    source: Source | Mixture,
    split: str,
    shard: seqio.ShardInfo,
    vocabulary: seqio.Vocabulary,
    length: int,
    seed: int,
) -> tf.data.Dataset:
    """The chunks of `source`'s `split` that process `shard.index` reads: endless for train."""
    parts = components(source)
    if parts:
        streams = [
            chunk_stream(c.source, split, shard, vocabulary, length, seed + zlib.crc32(c.name.encode()))
            for c in parts
        ]
        rates = np.array([c.rate for c in parts], np.float64)
        # seqio.Mixture's own mechanism, on streams that are already chunked: a seeded sampler,
        # whose checkpoint is its random state.
        return tf.data.Dataset.sample_from_datasets(
            streams, weights=list(rates / rates.sum()), seed=seed, stop_on_empty_dataset=False
        )
    if isinstance(source, SeqioTask):
        return _task_chunks(source, split, shard, vocabulary, length, seed)
    return _file_chunks(source, split, shard, vocabulary, length, seed)


def chunks_of(tokens: tf.Tensor, eos_id: int, length: int) -> tf.data.Dataset:
    """A document's tokens plus EOS, as chunks of `length`; an empty document gives none."""
    tokens = tf.cast(tokens, tf.int32)
    n = tf.shape(tokens)[0]
    total = tf.where(n > 0, n + 1, 0)
    tokens = tf.concat([tokens, [eos_id]], 0)[:total]
    count = (total + length - 1) // length
    rows = tf.reshape(tf.pad(tokens, [[0, count * length - total]]), [count, length])
    lengths = tf.minimum(total - tf.range(count) * length, length)
    return tf.data.Dataset.from_tensor_slices({"tokens": rows, "length": lengths})


def _file_chunks(source: FileSource, split, shard, vocabulary, length, seed) -> tf.data.Dataset:
    what = f"the {split} split of {type(source).__name__}"
    files = shard_files(files_of(source, split), shard.index, shard.num_shards, what)
    if isinstance(source, JsonlFiles):
        return _jsonl_chunks(files, source.field, split, vocabulary, length, seed)
    if split == "train":
        return segments.segment_chunks(files, vocabulary, length, seed)

    @_plain
    def read(name):
        # flat_map keeps the file's name and a chunk index in its checkpoint and reads the file
        # again on restore, so the text never enters the iterator state.
        return chunks_of(vocabulary.encode_tf(tf.io.read_file(name)), vocabulary.eos_id, length)

    return tf.data.Dataset.from_tensor_slices(files).flat_map(read)


def _jsonl_chunks(files: list[str], field: str, split, vocabulary, length, seed) -> tf.data.Dataset:
    """Each line's document in chunks; train: the files in a new order each epoch, 16 at a time."""

    @_plain
    def read(name):
        compression = tf.where(tf.strings.regex_full_match(name, r".*\.gz"), "GZIP", "")
        lines = tf.data.TextLineDataset(name, compression_type=compression).enumerate(start=1)
        lines = lines.filter(lambda _, line: tf.strings.length(tf.strings.strip(line)) > 0)
        return lines.flat_map(
            _plain(
                lambda number, line: chunks_of(
                    vocabulary.encode_tf(_json_text(line, number, name, field)), vocabulary.eos_id, length
                )
            )
        )

    names = tf.constant(files)
    if split != "train":
        return tf.data.Dataset.from_tensor_slices(names).flat_map(read)
    return _epochs(names, seed).interleave(read, cycle_length=min(CYCLE_LENGTH, len(files)), block_length=1)


def _epochs(names: tf.Tensor, seed: int) -> tf.data.Dataset:
    """The file names over and over, each epoch in a new seeded permutation: no buffer, no state
    but a counter."""
    n = int(names.shape[0])

    @_plain
    def pick(i):
        epoch = i // n
        index = tf.random.experimental.index_shuffle(
            i % n, seed=tf.stack([tf.constant(seed, tf.int64), epoch]), max_index=n - 1
        )
        return tf.gather(names, index)

    return tf.data.Dataset.range(np.iinfo(np.int64).max).map(pick)


def _json_text(line: tf.Tensor, number: tf.Tensor, name: tf.Tensor, field: str) -> tf.Tensor:
    def parse(line: bytes, number: np.int64, name: bytes) -> bytes:
        where = f"{name.decode()} line {int(number)}"
        try:
            doc = json.loads(line)
        except ValueError as e:
            raise ValueError(f"{_BAD_DOCUMENT}{where} is not JSON ({e})") from None
        if not isinstance(doc, dict) or field not in doc:
            keys = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
            raise ValueError(f"{_BAD_DOCUMENT}{where} has no field {field!r} (it has {keys})")
        if not isinstance(doc[field], str):
            raise ValueError(
                f"{_BAD_DOCUMENT}{where}: field {field!r} is a {type(doc[field]).__name__}, not text"
            )
        return doc[field].encode("utf-8")

    text = tf.numpy_function(parse, [line, number, name], tf.string, stateful=False)
    return tf.ensure_shape(text, [])


def bad_document(error: tf.errors.OpError) -> str | None:
    """The one-line message of a bad JSONL line raised inside tf.data, if that is what `error` is."""
    found = re.search(re.escape(_BAD_DOCUMENT) + r"(.*)", error.message)
    return found.group(1).strip() if found else None


def _task_chunks(source: SeqioTask, split, shard, vocabulary, length, seed) -> tf.data.Dataset:
    task = provider(source.name)
    check_task(task, vocabulary)
    if split not in task.splits:
        raise DataError(f"seqio Task {task.name!r} has no {split!r} split (it has {list(task.splits)}).")
    ds = task.get_dataset(
        sequence_length={"targets": length},
        split=split,
        use_cached=False,
        shuffle=False,  # no shuffle buffer: the order is the Task source's own
        seed=seed,
        shard_info=shard if shard.num_shards > 1 else None,
        num_epochs=None if split == "train" else 1,
        trim_output_features=False,  # we cut documents into chunks instead of truncating them
    )
    eos = vocabulary.eos_id

    @_plain
    def drop_eos(tokens):
        n = tf.shape(tokens)[0]
        ends_in_eos = tf.logical_and(n > 0, tf.equal(tokens[-1], eos))
        return tokens[: n - tf.cast(ends_in_eos, tf.int32)]

    return ds.flat_map(_plain(lambda ex: chunks_of(drop_eos(ex["targets"]), eos, length)))


def check_task(task: seqio.Task, vocabulary: seqio.Vocabulary) -> None:
    """A Task must give `targets` token ids in the vocabulary the model is built for."""
    features = task.output_features
    if "targets" not in features:
        raise DataError(
            f"seqio Task {task.name!r} has no output feature 'targets' (it has {sorted(features)}); "
            f"a language model trains on 'targets'."
        )
    theirs = features["targets"].vocabulary
    same = type(theirs) is type(vocabulary) and theirs.vocab_size == vocabulary.vocab_size
    same = same and getattr(theirs, "sp_model", None) == getattr(vocabulary, "sp_model", None)
    if not same:
        raise DataError(
            f"seqio Task {task.name!r} tokenizes with {_describe(theirs)} but data.vocabulary is "
            f"{_describe(vocabulary)}; set data.vocabulary.sentencepiece_model="
            f"{getattr(theirs, 'sentencepiece_model_file', '')!r} to match."
        )


def _describe(vocabulary: seqio.Vocabulary) -> str:
    if isinstance(vocabulary, seqio.SentencePieceVocabulary):
        return f"the SentencePiece model {vocabulary.sentencepiece_model_file} ({vocabulary.vocab_size} ids)"
    return f"{type(vocabulary).__name__} ({vocabulary.vocab_size} ids)"
