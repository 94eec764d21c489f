"""The seqio data path on real files: split, chunking, packing, features and iterator resume."""

import pathlib

import numpy as np
import pytest
import seqio
import tensorflow as tf

from llama_fdl.data import corpus, pipeline
from llama_fdl.data.config import BYTE_VOCAB_SIZE, DataConfig


def _name_in(split: str, stem: str, start: int = 0) -> str:
    """The first file name `stem_<i>.py` (i >= start) that the fixed rule puts in `split`."""
    i = start
    while corpus.split_of(f"{stem}_{i}.py") != split:
        i += 1
    return f"{stem}_{i}.py"


def _write_corpus(root: pathlib.Path, n_train: int = 30, n_valid: int = 6) -> dict[str, bytes]:
    """Files of distinct, recognisable content in both splits; some span several chunks."""
    rng = np.random.default_rng(0)
    texts, counts, i = {}, {"train": 0, "validation": 0}, 0
    while counts["train"] < n_train or counts["validation"] < n_valid:
        name = f"mod_{i}.py"
        split = corpus.split_of(name)
        if counts[split] < (n_train if split == "train" else n_valid):
            body = "".join(
                f"def f_{i}_{j}(x):\n    return x * {j}\n" for j in range(int(rng.integers(1, 12)))
            )
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(body)
            texts[name] = body.encode()
            counts[split] += 1
        i += 1
    return texts


def test_split_is_fixed_disjoint_and_covers_every_file(tmp_path):
    texts = _write_corpus(tmp_path)
    train = {p.relative_to(tmp_path).as_posix() for p in corpus.list_files(tmp_path, "train")}
    valid = {p.relative_to(tmp_path).as_posix() for p in corpus.list_files(tmp_path, "validation")}
    assert train.isdisjoint(valid)
    assert train | valid == set(texts)
    assert valid == {p for p in texts if corpus.split_of(p) == "validation"}


def test_stdlib_split_has_both_parts():
    root = corpus.stdlib_dir()
    assert len(corpus.list_files(root, "validation")) > 10
    assert len(corpus.list_files(root, "train")) > 500


def test_chunking_keeps_every_byte():
    data = bytes(range(256)) * 7
    chunks = corpus.chunk_bytes(data, 100)
    assert b"".join(chunks) == data
    assert max(map(len, chunks)) == 100
    with pytest.raises(ValueError):
        corpus.chunk_bytes(data, 0)


def test_vocabulary_size_matches_seqio():
    assert pipeline.vocabulary().vocab_size == BYTE_VOCAB_SIZE


def test_packed_batches_hold_the_files_text(tmp_path):
    texts = _write_corpus(tmp_path)
    config = DataConfig(sequence_length=64, batch_size=4, num_eval_batches=1, corpus_dir=str(tmp_path))
    batch = next(iter(pipeline.packed_dataset(config, "validation").as_numpy_iterator()))
    assert set(batch) == set(pipeline.FEATURES)
    for feature in pipeline.FEATURES:
        assert batch[feature].shape == (4, 64)
    valid_text = b"".join(t for p, t in texts.items() if corpus.split_of(p) == "validation")
    for row in range(4):
        seg = batch["decoder_segment_ids"][row]
        pos = batch["decoder_positions"][row]
        weights = batch["decoder_loss_weights"][row]
        targets = batch["decoder_target_tokens"][row]
        inputs = batch["decoder_input_tokens"][row]
        # Padding carries no loss; positions restart at 0 with each new packed document.
        np.testing.assert_array_equal(weights, (seg > 0).astype(weights.dtype))
        starts = np.flatnonzero(np.diff(seg, prepend=0) != 0)
        assert all(pos[s] == 0 for s in starts if seg[s] > 0)
        # Inputs are targets shifted right within each document.
        for s in np.unique(seg[seg > 0]):
            idx = np.flatnonzero(seg == s)
            np.testing.assert_array_equal(inputs[idx[1:]], targets[idx[:-1]])
            doc = targets[idx]
            assert doc[-1] == 1, "each chunk ends with EOS"
            raw = bytes(int(t) - 3 for t in doc[:-1])
            assert len(raw) <= 63 and raw in valid_text


def test_long_files_are_chunked_not_truncated(tmp_path):
    _write_corpus(tmp_path)
    big = b"".join(b"value_%04d = %d\n" % (i, i) for i in range(60))  # 960 bytes, 31 chunks of 31
    (tmp_path / _name_in("validation", "big")).write_bytes(big)
    config = DataConfig(sequence_length=32, batch_size=1, num_eval_batches=1, corpus_dir=str(tmp_path))
    ds = seqio.get_mixture_or_task(pipeline.register_task(config)).get_dataset(
        {"targets": 32}, split="validation", shuffle=False, num_epochs=1, use_cached=False
    )
    # Every chunk fits a sequence with its EOS, so nothing is cut: the bytes come back whole.
    pieces = [bytes(int(t) - 3 for t in ex["targets"][:-1]) for ex in ds.as_numpy_iterator()]
    assert max(map(len, pieces)) == 31
    assert big in b"".join(pieces)


def test_train_stream_is_seeded_and_differs_by_seed(tmp_path):
    _write_corpus(tmp_path)

    def first(seed):
        config = DataConfig(sequence_length=64, batch_size=2, seed=seed, corpus_dir=str(tmp_path))
        return next(pipeline.train_iterator(config))["decoder_target_tokens"].numpy()

    np.testing.assert_array_equal(first(0), first(0))
    assert not np.array_equal(first(0), first(1))


def test_iterator_checkpoint_resumes_exactly(tmp_path):
    _write_corpus(tmp_path / "corpus")
    config = DataConfig(sequence_length=64, batch_size=2, corpus_dir=str(tmp_path / "corpus"))
    it = pipeline.train_iterator(config)
    for _ in range(3):
        next(it)
    path = tf.train.Checkpoint(iterator=it).write(str(tmp_path / "it"))
    expected = [next(it)["decoder_target_tokens"].numpy() for _ in range(4)]
    fresh = pipeline.train_iterator(config)
    tf.train.Checkpoint(iterator=fresh).read(path).assert_consumed()
    got = [next(fresh)["decoder_target_tokens"].numpy() for _ in range(4)]
    for a, b in zip(expected, got, strict=True):
        np.testing.assert_array_equal(a, b)
    # Control: a fresh iterator without the restore is elsewhere in the stream.
    assert not np.array_equal(next(pipeline.train_iterator(config))["decoder_target_tokens"].numpy(), got[0])


def test_the_eval_set_is_checked_against_the_validation_split_before_any_data_loads(tmp_path):
    _write_corpus(tmp_path)
    config = DataConfig(sequence_length=64, batch_size=4, num_eval_batches=1000, corpus_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"need 256,000 validation tokens, .* lower data.num_eval_batches"):
        config.check_eval_fits()
    fits = DataConfig(sequence_length=64, batch_size=4, num_eval_batches=1, corpus_dir=str(tmp_path))
    fits.check_eval_fits()  # control: one batch fits


def test_too_many_eval_batches_is_a_clear_error(tmp_path):
    _write_corpus(tmp_path)
    config = DataConfig(sequence_length=64, batch_size=4, num_eval_batches=1000, corpus_dir=str(tmp_path))
    with pytest.raises(ValueError, match="lower data.num_eval_batches"):
        pipeline.eval_batches(config)
