"""`DataConfig`: what the model is trained and evaluated on. Imports no TensorFlow."""

from __future__ import annotations

import dataclasses
import pathlib

from llama_fdl.data import corpus

BYTE_VOCAB_SIZE = 259
"""Ids of seqio's ByteVocabulary: pad, EOS, UNK, then the 256 byte values."""


@dataclasses.dataclass
class DataConfig:
    """The stdlib-bytes corpus, packed by seqio into fixed-length sequences."""

    sequence_length: int = 256
    """Packed sequence length in tokens (bytes + one EOS per chunk)."""
    batch_size: int = 16
    """Global batch size in sequences, summed over all processes."""
    num_eval_batches: int = 16
    """Eval uses the first this-many validation batches, the same ones every time."""
    seed: int = 0
    """Seed of the train stream's order."""
    corpus_dir: str = ""
    """Directory of .py files to train on; empty means this interpreter's standard library."""

    def __post_init__(self) -> None:
        if self.sequence_length < 2:
            raise ValueError(f"data.sequence_length={self.sequence_length} must be at least 2.")
        if self.batch_size < 1 or self.num_eval_batches < 1:
            raise ValueError("data.batch_size and data.num_eval_batches must be positive.")
        if self.corpus_dir and not pathlib.Path(self.corpus_dir).is_dir():
            raise ValueError(f"data.corpus_dir={self.corpus_dir!r} is not a directory.")

    @property
    def root(self) -> pathlib.Path:
        return pathlib.Path(self.corpus_dir) if self.corpus_dir else corpus.stdlib_dir()

    @property
    def vocabulary_size(self) -> int:
        return BYTE_VOCAB_SIZE

    def check_eval_fits(self) -> None:
        """Raises ValueError unless the fixed eval batches fit in the validation split.

        Counted from file sizes, without TensorFlow, once per launch (llama_fdl.runner.check): a
        packed sequence holds at most sequence_length tokens, and the split holds one token per
        byte plus one EOS per chunk, so this bound is necessary; packing loses a little more,
        which `pipeline.eval_batches` still catches exactly once the data is loaded.
        """
        files = corpus.list_files(self.root, "validation")
        chunk = self.sequence_length - 1
        available = sum(size + -(-size // chunk) for size in (f.stat().st_size for f in files))
        per_batch = self.batch_size * self.sequence_length
        needed = self.num_eval_batches * per_batch
        if needed > available:
            fits = available // per_batch
            fix = (
                f"lower data.num_eval_batches to at most {fits}"
                if fits
                else "lower data.sequence_length or data.batch_size"
            )
            raise ValueError(
                f"data.num_eval_batches={self.num_eval_batches} batches of {self.batch_size}x"
                f"{self.sequence_length} tokens need {needed:,} validation tokens, but the validation "
                f"split of {self.root} has at most {available:,}; {fix}."
            )
