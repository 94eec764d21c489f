"""Our one-row packer gives exactly the batches of seqio's DecoderFeatureConverter(pack=True)."""

import numpy as np
import seqio
import tensorflow as tf

from llama_fdl.data import packing

LENGTH = 32


def _examples(seed: int, n: int = 60) -> list[np.ndarray]:
    """Token sequences of 1..LENGTH ids (>= 3, so none is pad), each ending in EOS (1)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        size = int(rng.choice([1, 2, 5, 17, 31, LENGTH, int(rng.integers(1, LENGTH + 1))]))
        out.append(np.append(rng.integers(3, 259, size=size - 1), 1).astype(np.int32))
    return out


def _ours(examples: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
    chunks = tf.data.Dataset.from_generator(
        lambda: ({"tokens": np.pad(e, (0, LENGTH - len(e))), "length": len(e)} for e in examples),
        output_signature={
            "tokens": tf.TensorSpec([LENGTH], tf.int32),
            "length": tf.TensorSpec([], tf.int32),
        },
    )
    rows = packing.pack(chunks, LENGTH, finite=True).map(packing.features)
    return list(rows.as_numpy_iterator())


def _seqio(examples: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
    ds = tf.data.Dataset.from_generator(
        lambda: ({"targets": e} for e in examples),
        output_signature={"targets": tf.TensorSpec([None], tf.int32)},
    )
    converter = seqio.DecoderFeatureConverter(pack=True)
    return list(converter(ds, {"targets": LENGTH}).as_numpy_iterator())


def _assert_same(ours, theirs) -> None:
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        assert set(a) == set(b) == set(packing.FEATURES)
        for key in packing.FEATURES:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_packing_equals_seqio_decoder_feature_converter():
    # Fewer examples than LENGTH: seqio packs in groups of LENGTH examples, and within one group
    # both pack greedily in order, so every row must agree.
    for seed in range(4):
        examples = _examples(seed, n=LENGTH - 1)
        _assert_same(_ours(examples), _seqio(examples))


def test_the_comparison_notices_a_difference():
    """Control: one token changed in one example makes the two disagree."""
    examples = _examples(0, n=LENGTH - 1)
    changed = [e.copy() for e in examples]
    changed[7][0] = 4 if changed[7][0] != 4 else 5
    ours, theirs = _ours(changed), _seqio(examples)
    try:
        _assert_same(ours, theirs)
    except AssertionError:
        return
    raise AssertionError("a changed token went unnoticed")


def test_rows_are_full_except_where_the_next_chunk_does_not_fit():
    examples = _examples(1, n=200)
    rows = _ours(examples)
    lengths = [len(e) for e in examples]
    used = [int(r["decoder_loss_weights"].sum()) for r in rows]
    assert sum(used) == sum(lengths)  # every token packed exactly once
    i = 0
    for row_used in used[:-1]:
        taken = 0
        while i < len(lengths) and taken + lengths[i] <= LENGTH:
            taken, i = taken + lengths[i], i + 1
        assert row_used == taken  # greedy: a row closes only when the next chunk would overflow it
