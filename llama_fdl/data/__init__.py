"""Data: sources (the stdlib corpus, text and JSONL files, seqio Tasks and Mixtures, mixtures),
vocabularies, streamed and packed batches, the launch-time check, and data-iterator checkpoints.

`config`, `sources`, `vocabulary` and `tokenizer` import no TensorFlow; the rest does (see
docs/DATA.md).
"""
