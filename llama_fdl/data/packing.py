"""Packing chunks into rows, with the features of seqio's `DecoderFeatureConverter(pack=True)`.

Shapes: L = sequence length.

seqio packs greedily in order: each example joins the current row if it fits, else the row is
written out and a new one begun. It does so in groups of L examples (`padded_batch(L)`, pack,
`unbatch`), so its tf.data iterator checkpoint holds a whole group of packed rows (hundreds of
KB at L=256) and the first row waits for L examples. `pack` makes the same rows with a
`tf.data.Dataset.scan` whose state is the one row being filled, so a checkpoint holds that row,
and rows come as soon as they are full. `tests/test_packing.py` checks the two give the same
batches. The features are then seqio's own (`make_autoregressive_inputs`).
"""

from __future__ import annotations

from llama_fdl.data.quiet_import import seqio, tf

FEATURES = (
    "decoder_input_tokens",
    "decoder_target_tokens",
    "decoder_loss_weights",
    "decoder_segment_ids",
    "decoder_positions",
)


def pack(chunks: tf.data.Dataset, length: int, finite: bool) -> tf.data.Dataset:
    """Rows `{"targets", "segment_ids", "positions"}` of [L] int32 from chunks of at most L tokens.

    Args:
      chunks: `{"tokens": [L], "length": ()}` elements (see `llama_fdl.data.streams`).
      length: L.
      finite: whether `chunks` ends; if so the last, partly filled row is written out too.
    """
    if finite:
        # A chunk longer than any row forces out the row being filled, then is dropped.
        flush = {"tokens": tf.zeros([length], tf.int32), "length": tf.constant(length + 1)}
        chunks = chunks.concatenate(tf.data.Dataset.from_tensors(flush))
    zeros = tf.zeros([length], tf.int32)
    start = (zeros, zeros, zeros, tf.constant(0), tf.constant(0))
    index_L = tf.range(length)

    @tf.autograph.experimental.do_not_convert  # plain tensor code: skip the slow conversion
    def add(state, chunk):
        row_L, segment_L, position_L, filled, segments = state
        size = chunk["length"]
        full = filled + size > length
        out = {"targets": row_L, "segment_ids": segment_L, "positions": position_L}
        emit = tf.logical_and(full, filled > 0)
        row_L, segment_L, position_L, filled, segments = [
            tf.where(full, fresh, kept) for fresh, kept in zip(start, state, strict=True)
        ]
        mask_L = (index_L >= filled) & (index_L < filled + size)
        row_L = tf.where(mask_L, tf.roll(chunk["tokens"], shift=filled, axis=0), row_L)
        segment_L = tf.where(mask_L, segments + 1, segment_L)
        position_L = tf.where(mask_L, index_L - filled, position_L)
        return (row_L, segment_L, position_L, filled + size, segments + 1), (emit, out)

    rows = chunks.scan(start, add).filter(lambda emit, _: emit)
    return rows.map(lambda _, row: row)


@tf.autograph.experimental.do_not_convert
def features(row: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """One packed row as the model's features, exactly as seqio's LM feature converter makes them."""
    segment_ids = row["segment_ids"]
    return {
        "decoder_input_tokens": seqio.utils.make_autoregressive_inputs(
            row["targets"], sequence_id=segment_ids
        ),
        "decoder_target_tokens": row["targets"],
        "decoder_loss_weights": tf.cast(segment_ids > 0, tf.int32),
        "decoder_segment_ids": segment_ids,
        "decoder_positions": row["positions"],
    }
