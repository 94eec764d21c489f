"""Llama-2-7B-like shapes, for a multi-accelerator host: FSDP, bf16 and full rematerialization."""

import fiddle as fdl

from experiments import fiddlers
from experiments.llama_1b import llama_1b


def llama_7b() -> fdl.Config:
    """6.5B parameters: d=4096, 32 blocks, 32 heads of 128, SwiGLU 11008, 4096-token sequences.

    The shapes of Llama 2 7B (whose feed-forward width 11008 is 8/3 d rounded up to 256), with
    the byte vocabulary of 259 ids instead of its 32K tokenizer (see llama_1b). Parameters and
    AdamW state take 105 GB in float32, so it needs FSDP over several accelerators; each block is
    rematerialized in the backward pass to keep activations small. Not yet run at this size: the
    test suite builds it and initialises it by shape on CPU only. Run on a multi-GPU/TPU host:
      python launch/launch.py --fdl_config=experiments.llama_7b
    """
    cfg = llama_1b()
    model = cfg.model.config
    model.embedding_dim = 4096
    model.num_blocks = 32
    model.head_dim = 128
    model.ffn_dim_multiplier = 1.0
    model.theta = 1e4
    fiddlers.remat(cfg, "full")
    cfg.data.sequence_length = 4096
    cfg.data.batch_size = 16
    cfg.data.num_eval_batches = 2
    return cfg
