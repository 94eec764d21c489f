"""Weight initialisation: `LlamaConfig.init_scheme` picks the distribution of every kernel.

- "lecun" (the default): each kernel is drawn with standard deviation 1/sqrt(fan_in)
  (truncated normal for the projections, normal for the embedding, whose fan-in is D).
- "small_wang" (xlstm-jax's Llama): normal draws, with "small init" (Nguyen & Salazar, 2019),
  std sqrt(2 / (5 D)), for the embedding, the q/k/v projections, the SwiGLU gate and up
  projections and the LM head, and "wang init", std 2 / (2 L) / sqrt(D) = 1 / (L sqrt(D)), for
  the two projections that write into the residual stream (attention output, SwiGLU down), as
  xlstm-jax calls `wang_init(D, 2 * num_blocks)` for both.

Biases start at zero and norm scales at one under both schemes.
"""

from __future__ import annotations

import math
from typing import Literal

from flax import linen as nn

from llama_fdl.model.config import LlamaConfig

Role = Literal["embedding", "input", "residual_output", "head"]


def small_init_std(embedding_dim: int) -> float:
    """sqrt(2 / (5 D))."""
    return math.sqrt(2.0 / (5.0 * embedding_dim))


def wang_init_std(embedding_dim: int, num_blocks: int) -> float:
    """2 / (2 L) / sqrt(D): xlstm-jax's wang_init(D, 2 L) for a block's output projections."""
    return 2.0 / (2 * num_blocks) / math.sqrt(embedding_dim)


def kernel_initializer(
    config: LlamaConfig, role: Role, default: nn.initializers.Initializer | None
) -> nn.initializers.Initializer | None:
    """The initializer of a kernel playing `role`: `default` under "lecun" (None: the layer's
    own), xlstm-jax's otherwise."""
    if config.init_scheme == "lecun":
        return default
    if role == "residual_output":
        return nn.initializers.normal(wang_init_std(config.embedding_dim, config.num_blocks))
    return nn.initializers.normal(small_init_std(config.embedding_dim))
