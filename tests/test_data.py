"""The data path on real files: splits, chunking, packed features, streaming order, shards and
iterator checkpoints, for the stdlib corpus, text files, JSONL and a mixture."""

import os
import pathlib

import numpy as np
import pytest
import seqio
import tensorflow as tf
from data_corpora import write_jsonl_corpus, write_mixture_corpus, write_text_files

from llama_fdl import builders
from llama_fdl.data import pipeline, segments, sources, streams
from llama_fdl.data.config import DataConfig
from llama_fdl.data.sources import Component, JsonlFiles, Mixture, StdlibCorpus, TextFiles
from llama_fdl.data.vocabulary import BYTE_VOCAB_SIZE, Vocabulary


def _text_of(targets: np.ndarray) -> bytes:
    """Byte ids back to bytes, dropping pad and EOS."""
    return bytes(int(t) - 3 for t in targets if t >= 3)


def _segments(batch: dict) -> list[np.ndarray]:
    """The target tokens of every packed segment of every row."""
    out = []
    for seg, targets in zip(batch["decoder_segment_ids"], batch["decoder_target_tokens"], strict=True):
        out += [targets[seg == s] for s in np.unique(seg[seg > 0])]
    return out


def _config(source, **kw) -> DataConfig:
    return DataConfig(
        **{"sequence_length": 64, "batch_size": 4, "num_eval_batches": 1, "source": source, **kw}
    )


def test_hash_split_is_fixed_disjoint_and_covers_every_file(tmp_path):
    texts = write_text_files(tmp_path, n=200)
    source = TextFiles(str(tmp_path / "**" / "*.txt"))
    train, valid = sources.files_of(source, "train"), sources.files_of(source, "validation")
    assert set(train).isdisjoint(valid) and set(train) | set(valid) == set(texts)
    expected = {
        p for p in texts if sources.split_of(str(pathlib.Path(p).relative_to(tmp_path))) == "validation"
    }
    assert set(valid) == expected and 0 < len(valid) < 20


def test_two_globs_split_by_glob(tmp_path):
    texts = write_text_files(tmp_path, n=30)
    source = TextFiles(str(tmp_path / "**" / "*.txt"), validation_files=str(tmp_path / "sub" / "*.txt"))
    valid = sources.files_of(source, "validation")
    assert set(valid) == {p for p in texts if "/sub/" in p}
    assert set(sources.files_of(source, "train")) == set(texts) - set(valid)


def test_stdlib_split_has_both_parts():
    assert len(sources.files_of(StdlibCorpus(), "validation")) > 10
    assert len(sources.files_of(StdlibCorpus(), "train")) > 500


def test_shards_are_disjoint_and_cover_the_split(tmp_path):
    write_text_files(tmp_path)
    files = sources.files_of(TextFiles(str(tmp_path / "*.txt")), "train")
    shards = [sources.shard_files(files, i, 3, "x") for i in range(3)]
    assert sorted(sum(shards, [])) == sorted(files)
    assert all(set(a).isdisjoint(b) for a in shards for b in shards if a is not b)


def test_chunks_keep_every_token_and_end_documents_with_eos():
    tokens = tf.range(3, 3 + 150)
    chunks = list(streams.chunks_of(tokens, eos_id=1, length=64).as_numpy_iterator())
    assert [int(c["length"]) for c in chunks] == [64, 64, 23]
    joined = np.concatenate([c["tokens"][: c["length"]] for c in chunks])
    np.testing.assert_array_equal(joined, [*range(3, 153), 1])
    assert list(streams.chunks_of(tf.zeros([0], tf.int32), 1, 64)) == []  # empty documents vanish


def test_vocabulary_size_matches_seqio():
    assert Vocabulary().size == Vocabulary().seqio().vocab_size == BYTE_VOCAB_SIZE


def test_packed_batches_hold_the_files_text_whole(tmp_path):
    texts = write_text_files(tmp_path, n=60)
    big = "".join(f"value_{i:04d} = {i}\n" for i in range(60))  # 1,080 bytes: 17 chunks of 64
    (tmp_path / "sub" / "big.txt").write_text(big)
    source = TextFiles(str(tmp_path / "**" / "*.txt"), validation_files=str(tmp_path / "sub" / "*.txt"))
    # One row per batch, so that no partly filled batch is dropped at the end.
    batches = list(pipeline.packed_dataset(_config(source, batch_size=1), "validation").as_numpy_iterator())
    valid_text = {t for p, t in texts.items() if "/sub/" in p} | {big}
    for batch in batches:
        for feature in pipeline.FEATURES:
            assert batch[feature].shape == (1, 64)
        for row in range(1):
            seg, pos = batch["decoder_segment_ids"][row], batch["decoder_positions"][row]
            inputs, targets = batch["decoder_input_tokens"][row], batch["decoder_target_tokens"][row]
            np.testing.assert_array_equal(batch["decoder_loss_weights"][row], (seg > 0).astype(np.int32))
            for s in np.unique(seg[seg > 0]):
                idx = np.flatnonzero(seg == s)
                np.testing.assert_array_equal(pos[idx], np.arange(len(idx)))  # positions restart
                np.testing.assert_array_equal(inputs[idx[1:]], targets[idx[:-1]])  # shifted within
                assert inputs[idx[0]] == 0
    # Documents come back whole and in order, each ending in one EOS: nothing truncated.
    segments = [s for b in batches for s in _segments(b)]
    stream = b"".join(_text_of(s) for s in segments)
    assert sum(s[-1] == 1 for s in segments) == len(valid_text)  # one EOS per document
    assert all(1 not in s[:-1] for s in segments)
    # Validation reads its files in order, so the stream is their bytes end to end.
    assert stream == b"".join(pathlib.Path(f).read_bytes() for f in sources.files_of(source, "validation"))


def test_train_stream_interleaves_files_in_a_seeded_order(tmp_path):
    texts = write_text_files(tmp_path, n=60)
    source = TextFiles(str(tmp_path / "**" / "*.txt"))

    def first(seed):
        it = pipeline.packed_dataset(_config(source, seed=seed), "train").as_numpy_iterator()
        return next(it)["decoder_target_tokens"]

    np.testing.assert_array_equal(first(0), first(0))
    assert not np.array_equal(first(0), first(1))
    # One batch mixes chunks of many files (the chunks of all files come in a shuffled order).
    batch = next(pipeline.packed_dataset(_config(source, batch_size=8), "train").as_numpy_iterator())
    homes = [{p for p, t in texts.items() if _text_of(s) in t.encode()} for s in _segments(batch)]
    assert len(set().union(*(h for h in homes if len(h) == 1))) >= 4


def test_an_epoch_reads_every_train_document_once(tmp_path):
    texts = write_text_files(tmp_path, n=24)
    source = TextFiles(str(tmp_path / "**" / "*.txt"), validation_files=str(tmp_path / "sub" / "t_0.txt"))
    train_docs = {t for p, t in texts.items() if not p.endswith("/sub/t_0.txt")}
    chunks = streams.chunk_stream(source, "train", seqio.ShardInfo(0, 1), Vocabulary().seqio(), 1024, 0)
    seen = [
        _text_of(c["tokens"][: c["length"]]).decode()
        for c in chunks.take(len(train_docs) * 2).as_numpy_iterator()
    ]
    assert sorted(seen[: len(train_docs)]) == sorted(train_docs)  # epoch 1: each once
    assert sorted(seen[len(train_docs) :]) == sorted(train_docs)  # epoch 2: each once again
    assert seen[: len(train_docs)] != seen[len(train_docs) :]  # in a new order


def _write(tmp_path: pathlib.Path, kind: str) -> DataConfig:
    if kind == "stdlib":
        return DataConfig(sequence_length=64, batch_size=2)
    if kind == "jsonl":
        write_jsonl_corpus(tmp_path)
        return _config(
            JsonlFiles(f"{tmp_path}/*.jsonl*", validation_files=f"{tmp_path}/valid.jsonl"), batch_size=2
        )
    write_mixture_corpus(tmp_path)
    mixture = Mixture(
        (
            Component(
                "jsonl", JsonlFiles(f"{tmp_path}/jsonl/*.jsonl*", f"{tmp_path}/jsonl/valid.jsonl"), 3.0
            ),
            Component("text", TextFiles(f"{tmp_path}/text/**/*.txt", f"{tmp_path}/text/sub/*.txt"), 1.0),
        )
    )
    return _config(mixture, batch_size=2)


def _state_bytes(directory: pathlib.Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir())


@pytest.mark.parametrize("kind", ["stdlib", "jsonl", "mixture"])
def test_iterator_checkpoint_resumes_exactly_and_holds_no_documents(tmp_path, kind):
    config = _write(tmp_path / "corpus", kind)
    it = pipeline.train_iterator(config)
    for _ in range(37):
        next(it)
    path = tf.train.Checkpoint(iterator=it).write(str(tmp_path / "state" / "it"))
    expected = [next(it)["decoder_target_tokens"].numpy() for _ in range(25)]
    fresh = pipeline.train_iterator(config)
    tf.train.Checkpoint(iterator=fresh).read(path).assert_consumed()
    got = [next(fresh)["decoder_target_tokens"].numpy() for _ in range(25)]
    for a, b in zip(expected, got, strict=True):
        np.testing.assert_array_equal(a, b)
    # Control: a fresh iterator without the restore is elsewhere in the stream.
    assert not np.array_equal(next(pipeline.train_iterator(config))["decoder_target_tokens"].numpy(), got[0])
    # The state is counters, file names, the row being packed and two prefetched batches of
    # 2x64 tokens: a few KB, whatever the corpus holds.
    assert _state_bytes(tmp_path / "state") < 40_000, _state_bytes(tmp_path / "state")


def test_iterator_state_does_not_grow_with_the_files(tmp_path):
    """Text files of 4 KB and of 400 KB leave iterator states of about the same size."""
    sizes = {}
    for size in (4_000, 400_000):
        root = tmp_path / str(size)
        rng = np.random.default_rng(0)
        for i in range(20):
            (root / f"f{i}.txt").parent.mkdir(parents=True, exist_ok=True)
            (root / f"f{i}.txt").write_bytes(bytes(rng.integers(97, 123, size=size, dtype=np.uint8)))
        it = pipeline.train_iterator(_config(TextFiles(f"{root}/*.txt", f"{root}/f0.txt"), batch_size=2))
        for _ in range(50):
            next(it)
        tf.train.Checkpoint(iterator=it).write(str(tmp_path / f"state{size}" / "it"))
        sizes[size] = _state_bytes(tmp_path / f"state{size}")
    assert sizes[400_000] < 1.5 * sizes[4_000] and sizes[400_000] < 40_000, sizes


def test_mixture_samples_at_its_rates_and_evaluates_each_component(tmp_path):
    config = _write(tmp_path, "mixture")
    config.batch_size = 16
    chunks = streams.chunk_stream(config.source, "train", seqio.ShardInfo(0, 1), Vocabulary().seqio(), 64, 0)
    heads = [_text_of(c["tokens"]) for c in chunks.take(2000).as_numpy_iterator()]
    # Chunks that start a document say where they come from: jsonl names start with "j".
    starts = [h for h in heads if h.startswith(b"doc ")]
    from_jsonl = sum(h.startswith(b"doc j") for h in starts) / len(starts)
    assert 0.65 < from_jsonl < 0.85, from_jsonl  # rate 3:1 -> 0.75 of chunks (documents differ in length)
    sets = pipeline.eval_sets(config)
    assert [s.prefix for s in sets] == ["eval/", "eval/jsonl/", "eval/text/"]
    text_of_set = {
        s.prefix: b"".join(_text_of(t) for b in s.batches for t in b["decoder_target_tokens"]) for s in sets
    }
    assert b"doc jv" in text_of_set["eval/jsonl/"] and b"doc t" not in text_of_set["eval/jsonl/"]
    assert b"doc t" in text_of_set["eval/text/"] and b"doc j" not in text_of_set["eval/text/"]


def test_processes_read_disjoint_shards_of_every_source(tmp_path):
    config = _write(tmp_path, "mixture")

    def documents(index):
        ds = pipeline.packed_dataset(config, "train", seqio.ShardInfo(index, 2)).take(100)
        return {_text_of(s).split(b":")[0] for b in ds.as_numpy_iterator() for s in _segments(b)} - {b""}

    first, second = documents(0), documents(1)
    first = {d for d in first if d.startswith(b"doc ")}
    second = {d for d in second if d.startswith(b"doc ")}
    assert first and second and first.isdisjoint(second)
    assert {d[:5] for d in first} >= {b"doc j", b"doc t"}  # both components, in each shard


def test_too_many_eval_batches_is_one_clear_line(tmp_path):
    write_text_files(tmp_path, n=30)
    source = TextFiles(str(tmp_path / "**" / "*.txt"), validation_files=str(tmp_path / "sub" / "*.txt"))
    with pytest.raises(
        sources.DataError, match=r"do not fit in the validation split, which fills \d+; lower"
    ):
        pipeline.check(_config(source, num_eval_batches=1000))
    pipeline.check(_config(source))  # control


def test_the_builders_make_each_source(tmp_path):
    import fiddle as fdl

    made = fdl.build(
        builders.mixture(
            builders.component("a", builders.text_files("x/*.txt")),
            builders.component("b", builders.jsonl_files("y/*.jsonl", field="body")),
        )
    )
    assert made == Mixture(
        (Component("a", TextFiles("x/*.txt")), Component("b", JsonlFiles("y/*.jsonl", field="body")))
    )
    assert os.path.isdir(sources.stdlib_dir())


def test_text_segments_give_the_chunks_of_whole_files(tmp_path):
    """Bytes: an epoch of the segment stream is exactly the chunks of each whole file."""
    texts = write_text_files(tmp_path, n=12)
    files = sorted(texts)
    vocabulary = Vocabulary().seqio()
    count = sum(-(-(len(t.encode()) + 1) // 32) for t in texts.values())
    epoch = list(segments.segment_chunks(files, vocabulary, 32, seed=0).take(count).as_numpy_iterator())
    whole = [
        c
        for f in files
        for c in streams.chunks_of(vocabulary.encode_tf(tf.io.read_file(f)), 1, 32).as_numpy_iterator()
    ]

    def key(c):
        return c["tokens"][: c["length"]].tobytes()

    assert sorted(map(key, epoch)) == sorted(map(key, whole))
    assert list(map(key, epoch)) != list(map(key, whole))  # in another order: shuffled
    next_epoch = list(
        segments.segment_chunks(files, vocabulary, 32, seed=0).take(2 * count).as_numpy_iterator()
    )
    assert sorted(map(key, next_epoch[count:])) == sorted(map(key, whole))


def test_line_segments_partition_each_file_at_line_starts(tmp_path):
    """Other vocabularies: segments cover the file exactly and begin at line starts (or at a
    boundary a line reaches past)."""
    lines = [("x" * int(n)) + "\n" for n in np.random.default_rng(0).integers(0, 90, size=300)]
    lines[40] = "y" * 700 + "\n"  # a line longer than a segment is cut
    path = tmp_path / "f.txt"
    path.write_text("".join(lines))
    size, bytes_per_segment = path.stat().st_size, 256
    count = -(-size // bytes_per_segment)
    pieces = [
        segments._lines(tf.constant(str(path)), tf.constant(size, tf.int64), tf.constant(j, tf.int64),
                        tf.constant(j == count - 1), bytes_per_segment).numpy()
        for j in range(count)
    ]  # fmt: skip
    assert b"".join(pieces) == path.read_bytes()
    starts = np.cumsum([0] + [len(p) for p in pieces[:-1]])
    text = path.read_bytes()
    assert all(s == 0 or text[s - 1 : s] == b"\n" or s % bytes_per_segment == 0 for s in starts)
    assert sum(1 for s in starts if s and text[s - 1 : s] != b"\n") >= 1  # the long line was cut
