"""A run that finishes in seconds, for tests and smoke checks."""

import fiddle as fdl

from experiments.small import small


def tiny() -> fdl.Config:
    """A 2-block d=32 Llama for 20 steps on 64-byte sequences: seconds, for tests and smoke checks.

    Small enough that the launcher tests train it several times; it learns (loss falls below a
    uniform guess) but means nothing as a result. Run:
      python launch/launch.py --fdl_config=experiments.tiny --workdir=/tmp/tiny
    """
    cfg = small()
    cfg.model.config.embedding_dim = 32
    cfg.model.config.num_blocks = 2
    cfg.model.config.head_dim = 16
    cfg.data.sequence_length = 64
    cfg.data.batch_size = 8
    cfg.data.num_eval_batches = 2
    cfg.optimizer.warmup_steps = 5
    cfg.trainer.num_train_steps = 20
    cfg.trainer.eval_every = 10
    cfg.trainer.log_every = 5
    cfg.trainer.checkpoint.every_steps = 10
    cfg.trainer.sample_every = 0  # the launcher tests run tiny often; sampling would add a compile
    return cfg
