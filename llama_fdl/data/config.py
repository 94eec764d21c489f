"""`DataConfig`: what the model is trained and evaluated on. Imports no TensorFlow."""

from __future__ import annotations

import dataclasses

from llama_fdl.data.sources import Mixture, Source, StdlibCorpus
from llama_fdl.data.vocabulary import Vocabulary


@dataclasses.dataclass
class DataConfig:
    """A source of documents, tokenized, cut into chunks and packed by seqio's rules into batches."""

    sequence_length: int = 256
    """Packed sequence length in tokens (a document's tokens plus its EOS, in chunks of this)."""
    batch_size: int = 16
    """Global batch size in sequences, summed over all processes."""
    num_eval_batches: int = 16
    """Eval uses the first this-many validation batches (of each eval set), the same every time."""
    seed: int = 0
    """Seed of the train stream's order (and of a mixture's sampling)."""
    source: Source | Mixture = dataclasses.field(default_factory=StdlibCorpus)
    """Where documents come from: the stdlib corpus, text or JSONL files, a seqio Task, a Mixture."""
    vocabulary: Vocabulary = dataclasses.field(default_factory=Vocabulary)
    """How text becomes ids: bytes, or a SentencePiece model; the model's vocab_size comes from it."""
    module: str | tuple[str, ...] = ""
    """Python module(s) imported first, e.g. ones that register seqio Tasks or Mixtures."""

    def __post_init__(self) -> None:
        if self.sequence_length < 2:
            raise ValueError(f"data.sequence_length={self.sequence_length} must be at least 2.")
        if self.batch_size < 1 or self.num_eval_batches < 1:
            raise ValueError("data.batch_size and data.num_eval_batches must be positive.")

    @property
    def modules(self) -> tuple[str, ...]:
        if isinstance(self.module, str):
            return (self.module,) if self.module else ()
        return tuple(self.module)

    @property
    def vocabulary_size(self) -> int:
        return self.vocabulary.size
