"""Data: the stdlib corpus, its seqio Task and packed batches, and data-iterator checkpoints."""
