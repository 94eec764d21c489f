"""The train stream of text files: their segments in a new seeded order each epoch, read by offset.

Shapes: L = sequence length, B = segment bytes, W = window bytes (at most 2B).

Reading each file from its start, a few files at a time, fills consecutive batches with the same
few files: a run shorter than an epoch sees few of them, in long stretches, and fits them (on
`small`, eval loss 1.95 at step 500 where a global order of chunks gave 1.45). So the train
stream cuts every file into segments of about B bytes and visits all segments of all files in a
permutation per epoch (`index_shuffle`, stateless), reading each segment by its offset with one
seek. Nothing is read whole, and the iterator state is a counter and the segments being chunked
(named by file and index).

With the byte vocabulary, B = L and a segment is exactly one chunk: tokens jL..(j+1)L of the
document's bytes plus EOS, the chunks `streams.chunks_of` makes of the whole file; the stream is
a global permutation of all chunks. With any other vocabulary the number of tokens in B bytes is
not known before tokenizing, so B = SEGMENT_ROWS x L bytes, a segment is the lines that start in
[jB, (j+1)B) (a line reaching past the next boundary is cut there), tokenized alone and cut into
chunks, and CYCLE_LENGTH segments are read at a time, one chunk from each in turn; small
segments would leave rows part empty (about 18% padding at B = 4L, 8% at 16L). A vocabulary
whose pieces never hold a newline (those of `llama_fdl.data.tokenizer`, trained on lines) gives
each file the tokens of the whole file; one with `add_dummy_prefix` adds a space per segment. The
file's last segment ends in EOS.
"""

from __future__ import annotations

import os

import numpy as np

from llama_fdl.data.quiet_import import seqio, tf

_NEWLINE = 10
SEGMENT_ROWS = 16
"""Without the byte vocabulary a segment is about SEGMENT_ROWS x L bytes ..."""
CYCLE_LENGTH = 16
"""... and CYCLE_LENGTH segments are read at once, one chunk from each in turn."""


def segment_chunks(files: list[str], vocabulary: seqio.Vocabulary, length: int, seed: int) -> tf.data.Dataset:
    """Endless chunks (`{"tokens": [L], "length": ()}`) of the segments of `files`, shuffled per epoch."""
    sizes = np.array([os.path.getsize(f) for f in files], np.int64)
    names = [f for f, size in zip(files, sizes, strict=True) if size > 0]  # empty files: no document
    sizes = sizes[sizes > 0]
    exact = isinstance(vocabulary, seqio.ByteVocabulary)
    segment_bytes = length if exact else SEGMENT_ROWS * length
    # Bytes: the document's s bytes and its EOS make ceil((s + 1) / L) chunks, one per segment.
    counts = -(-(sizes + 1) // segment_bytes) if exact else -(-sizes // segment_bytes)
    ends = np.cumsum(counts)
    total = int(ends[-1])
    names_t, sizes_t, counts_t, ends_t = (tf.constant(a) for a in (names, sizes, counts, ends))
    eos = vocabulary.eos_id

    @tf.autograph.experimental.do_not_convert
    def locate(i):
        epoch = i // total
        g = tf.random.experimental.index_shuffle(
            i % total, seed=tf.stack([tf.constant(seed, tf.int64), epoch]), max_index=total - 1
        )
        f = tf.searchsorted(ends_t, [g], side="right")[0]
        return names_t[f], sizes_t[f], g - (ends_t[f] - counts_t[f]), counts_t[f]

    @tf.autograph.experimental.do_not_convert
    def chunks(name, size, j, count):
        last = tf.equal(j, count - 1)
        if exact:
            start, end = j * segment_bytes, tf.minimum((j + 1) * segment_bytes, size)
            text = _read(name, size, start, end - start)
        else:
            text = _lines(name, size, j, last, segment_bytes)
        tokens = tf.cast(vocabulary.encode_tf(text), tf.int32)
        tokens = tf.concat([tokens, tf.fill([tf.cast(last, tf.int32)], eos)], 0)
        n = tf.shape(tokens)[0]
        rows = (n + length - 1) // length
        padded_L = tf.reshape(tf.pad(tokens, [[0, rows * length - n]]), [rows, length])
        lengths = tf.minimum(n - tf.range(rows) * length, length)
        return tf.data.Dataset.from_tensor_slices({"tokens": padded_L, "length": lengths})

    located = tf.data.Dataset.range(np.iinfo(np.int64).max).map(locate)
    if exact:
        return located.flat_map(chunks)
    return located.interleave(chunks, cycle_length=CYCLE_LENGTH, block_length=1)


def _read(name: tf.Tensor, size: tf.Tensor, start: tf.Tensor, count: tf.Tensor) -> tf.Tensor:
    """Bytes start..start+count of the file (count may be 0), with one seek, not the whole file."""
    # A record must hold at least one byte inside the file: read one byte before an empty range.
    at, record_bytes = tf.minimum(start, size - 1), tf.maximum(count, 1)
    record = tf.data.FixedLengthRecordDataset(
        name, record_bytes=record_bytes, header_bytes=at, footer_bytes=size - at - record_bytes
    )
    return tf.strings.substr(record.take(1).get_single_element(), start - at, count)


def _lines(name, size, j, last, segment_bytes: int) -> tf.Tensor:
    """Segment j: from the line start at or after jB (0 for j = 0) to the one at or after (j+1)B."""
    window_start = j * segment_bytes
    window = _read(
        name, size, window_start, tf.minimum(size, window_start + 2 * segment_bytes) - window_start
    )
    bytes_W = tf.io.decode_raw(window, tf.uint8)
    newlines = tf.cast(tf.where(tf.equal(bytes_W, _NEWLINE))[:, 0], tf.int64)

    def line_start(lo):
        """The first position after a newline in [lo, lo + B), or lo + B if there is none."""
        inside = (newlines >= lo) & (newlines < lo + segment_bytes)
        return tf.reduce_min(tf.concat([tf.boolean_mask(newlines + 1, inside), [lo + segment_bytes]], 0))

    begin = tf.where(tf.equal(j, 0), tf.constant(0, tf.int64), line_start(tf.constant(0, tf.int64)))
    end = tf.where(last, size - window_start, line_start(tf.constant(segment_bytes, tf.int64)))
    window_bytes = tf.cast(tf.strings.length(window), tf.int64)
    begin, end = tf.minimum(begin, window_bytes), tf.minimum(end, window_bytes)
    return tf.strings.substr(window, begin, tf.maximum(end - begin, 0))
