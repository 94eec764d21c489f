"""About 100M parameters: the largest model worth a short CPU run."""

import fiddle as fdl

from experiments.base import base


def medium() -> fdl.Config:
    """99.5M-parameter Llama (d=768, 14 blocks, head_dim 64), batch 8 x 256 bytes, 60 steps.

    GPT-2-small sized: for checking on a CPU that a model of real width builds, initialises,
    trains and checkpoints (1.2 GB per checkpoint) before spending accelerator time. 60 steps do
    not train it far; the point is the path, not the loss. Peak learning rate 1e-3, since 3e-3
    diverges at this width. Measured: about 20 s per step on 2 shared CPU cores (100 tokens/s), so
    about 20 minutes plus a minute of start-up. Run:
      python launch/launch.py --fdl_config=experiments.medium
    """
    cfg = base()
    cfg.model.config.embedding_dim = 768
    cfg.model.config.num_blocks = 14
    cfg.data.batch_size = 8
    cfg.data.num_eval_batches = 4
    cfg.optimizer.peak_learning_rate = 1e-3
    cfg.optimizer.warmup_steps = 10
    cfg.trainer.num_train_steps = 60
    cfg.trainer.eval_every = 30
    cfg.trainer.log_every = 5
    cfg.trainer.checkpoint.every_steps = 30
    return cfg
