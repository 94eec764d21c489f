"""The CPU demo: the model that sees the most bytes in about ten minutes on two cores."""

import fiddle as fdl

from experiments.base import base


def small() -> fdl.Config:
    """0.92M-parameter Llama (d=128, 4 blocks, head_dim 64), batch 16 x 256 bytes, ~10 min on 2 CPUs.

    At a ten-minute CPU budget a narrower model wins because it sees more tokens (DESIGN.md).
    Measured 2026-11-27: final validation loss 1.05 nats/byte after 10.4 min of training at
    ~13.5k tokens/s (a byte-frequency model scores 3.27). Every 250 steps TensorBoard's text tab
    gets continuations of three validation prompts. Run, then sample from it:
      python launch/launch.py --fdl_config=experiments.small
      python launch/sample.py --workdir=runs/small --prompt='def fibonacci(n):' --num_samples=3
    """
    cfg = base()
    cfg.model.config.embedding_dim = 128
    cfg.trainer.num_train_steps = 2000
    cfg.trainer.eval_every = 250
    cfg.trainer.log_every = 100
    cfg.trainer.checkpoint.every_steps = 500
    cfg.trainer.sample_every = 250
    return cfg
