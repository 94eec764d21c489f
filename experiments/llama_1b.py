"""Llama-3.2-1B-like shapes, for a GPU or TPU; sharded with FSDP over all devices, bf16 compute."""

import fiddle as fdl

from experiments import fiddlers
from experiments.medium import medium


def llama_1b() -> fdl.Config:
    """1.07B parameters: d=2048, 16 blocks, 32 heads of 64, SwiGLU 8192, rotary theta 5e5.

    The width, depth, heads, feed-forward size and theta of Llama 3.2 1B, with two differences
    that this model family does not have knobs for: every head has its own keys and values (no
    grouped-query attention), and the vocabulary is the byte corpus's 259 ids rather than a
    128K-token tokenizer (which alone would add 0.5B embedding and head parameters). A real
    tokenizer means a new data pipeline; its size then goes in model.config.vocab_size.
    Global batch 32 x 2048 tokens, sharded over every device (the batch must divide by the
    device count). Not yet run at this size: the test suite builds it and initialises it by
    shape on CPU; memory per device is unmeasured (with XLA attention, add --fiddler=remat or
    --fdl.model.config.attention_backend=cudnn if it does not fit). Run on accelerators:
      python launch/launch.py --fdl_config=experiments.llama_1b
    """
    cfg = medium()
    model = cfg.model.config
    model.embedding_dim = 2048
    model.num_blocks = 16
    model.head_dim = 64
    model.ffn_dim_multiplier = 1.5
    model.ffn_multiple_of = 256
    model.theta = 5e5
    fiddlers.bf16(cfg)
    fiddlers.fsdp(cfg)
    cfg.data.sequence_length = 2048
    cfg.data.batch_size = 32
    cfg.data.num_eval_batches = 4
    cfg.optimizer.peak_learning_rate = 3e-4
    cfg.optimizer.warmup_steps = 1000
    cfg.trainer.num_train_steps = 20_000
    cfg.trainer.eval_every = 1000
    cfg.trainer.log_every = 50
    cfg.trainer.checkpoint.every_steps = 1000
    return cfg
