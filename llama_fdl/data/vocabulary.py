"""The vocabulary: seqio's `ByteVocabulary` (the default) or a SentencePiece model, and its size.

`Vocabulary` describes which one without importing TensorFlow, so the model's `vocab_size` can be
derived from it while the graph is built (`vocabulary_size`, the one home of that number), and
`Vocabulary.seqio()` makes the seqio object the data pipeline tokenizes with.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import seqio
    from sentencepiece import sentencepiece_model_pb2

BYTE_VOCAB_SIZE = 259
"""Ids of seqio's ByteVocabulary: pad, EOS, UNK, then the 256 byte values."""
BYTE_EOS_ID = 1


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """Bytes (seqio.ByteVocabulary), or a SentencePiece model (seqio.SentencePieceVocabulary)."""

    sentencepiece_model: str = ""
    """Path of a SentencePiece `.model` file; empty: bytes (259 ids: pad, EOS, UNK, 256 bytes)."""

    def __post_init__(self) -> None:
        if self.sentencepiece_model:
            _sentencepiece_proto(self.sentencepiece_model)  # a missing or foreign file fails here

    @property
    def size(self) -> int:
        """How many ids the model needs rows for."""
        if not self.sentencepiece_model:
            return BYTE_VOCAB_SIZE
        return len(_sentencepiece_proto(self.sentencepiece_model).pieces)

    @property
    def eos_id(self) -> int:
        if not self.sentencepiece_model:
            return BYTE_EOS_ID
        return _sentencepiece_proto(self.sentencepiece_model).trainer_spec.eos_id

    def seqio(self) -> seqio.Vocabulary:
        """The seqio vocabulary this describes (imports seqio, and with it TensorFlow, quietly)."""
        from llama_fdl.data.quiet_import import seqio

        if not self.sentencepiece_model:
            return seqio.ByteVocabulary()
        return seqio.SentencePieceVocabulary(self.sentencepiece_model)

    def byte_lengths(self) -> np.ndarray:
        """[size] int32: how many UTF-8 bytes each id decodes to (0 for pad, EOS and UNK).

        A SentencePiece piece counts its text with the word-boundary mark `▁` as the space it
        decodes to; a byte-fallback piece counts one byte. Summed over a document's ids this is
        the length of the text they decode to (a model trained with `add_dummy_prefix` decodes
        one space fewer per document than counted here; `llama_fdl.data.tokenizer` turns it off).
        """
        if not self.sentencepiece_model:
            lengths = np.ones(BYTE_VOCAB_SIZE, np.int32)
            lengths[:3] = 0
            return lengths
        return _piece_byte_lengths(self.sentencepiece_model)


def vocabulary_size(vocabulary: Vocabulary) -> int:
    """The number of ids of `vocabulary`: what the model's `vocab_size` is derived from."""
    return vocabulary.size


@functools.cache
def _sentencepiece_proto(path: str) -> sentencepiece_model_pb2.ModelProto:
    from sentencepiece import sentencepiece_model_pb2

    file = pathlib.Path(path)
    if not file.is_file():
        raise ValueError(
            f"data.vocabulary.sentencepiece_model={path!r} does not exist; train one with "
            f"`python -m llama_fdl.data.tokenizer --input=GLOB --vocab_size=N --output={path}`."
        )
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(file.read_bytes())
    except Exception:  # noqa: BLE001 -- protobuf's DecodeError, or worse for arbitrary bytes
        proto.Clear()
    if not proto.pieces:
        raise ValueError(
            f"data.vocabulary.sentencepiece_model={path!r} is not a SentencePiece model; give the "
            f".model file that spm_train or `python -m llama_fdl.data.tokenizer` writes."
        )
    if proto.trainer_spec.eos_id < 0:
        raise ValueError(
            f"data.vocabulary.sentencepiece_model={path!r} has no EOS piece; documents need one "
            f"(train with --eos_id, as `python -m llama_fdl.data.tokenizer` does)."
        )
    return proto


@functools.cache
def _piece_byte_lengths(path: str) -> np.ndarray:
    from sentencepiece import sentencepiece_model_pb2

    kinds = sentencepiece_model_pb2.ModelProto.SentencePiece
    lengths = []
    for piece in _sentencepiece_proto(path).pieces:
        if piece.type == kinds.BYTE:
            lengths.append(1)
        elif piece.type in (kinds.NORMAL, kinds.USER_DEFINED):
            lengths.append(len(piece.piece.replace("\u2581", " ").encode("utf-8")))
        else:  # control pieces (pad, EOS), UNK and unused ones decode to no text
            lengths.append(0)
    return np.asarray(lengths, np.int32)
