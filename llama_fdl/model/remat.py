"""What a transformer block recomputes in the backward pass instead of keeping.

`ParallelConfig.remat` names it: the whole block ("full", or "dots_saveable", which keeps the
matmul outputs), only its attention or only its feed-forward sub-layer ("attention", "ffn"), or
each sub-layer on its own ("attention_and_ffn", which keeps the residual stream between them).
The sub-layer choices are what xlstm-jax's module-name lists `["AttnBlock"]`, `["FFNBlock"]` and
`["AttnBlock", "FFNBlock"]` do; `["TransformerBlock"]` is "full".
"""

from __future__ import annotations

import jax
from flax import linen as nn

from llama_fdl.model.config import LlamaConfig

_WHOLE_BLOCK = {
    "full": None,  # save nothing: recompute the whole block
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
}
_SUBLAYERS = {
    "attention": ("attention",),
    "ffn": ("ffn",),
    "attention_and_ffn": ("attention", "ffn"),
}


def remat_block(cls: type[nn.Module], config: LlamaConfig, decode: bool) -> type[nn.Module]:
    """The block class, wrapped in nn.remat when the whole block is rematerialized."""
    remat = config.parallel.remat
    if decode or remat not in _WHOLE_BLOCK:  # decoding has no backward pass to save memory for
        return cls
    return nn.remat(cls, policy=_WHOLE_BLOCK[remat], prevent_cse=_prevent_cse(config))


def remat_sublayer(cls: type[nn.Module], name: str, config: LlamaConfig, decode: bool) -> type[nn.Module]:
    """The sub-layer class `name` ("attention" or "ffn"), wrapped in nn.remat when the config
    rematerializes that sub-layer on its own."""
    if decode or name not in _SUBLAYERS.get(config.parallel.remat, ()):
        return cls
    return nn.remat(cls, prevent_cse=_prevent_cse(config))


def _prevent_cse(config: LlamaConfig) -> bool:
    # Under scan, XLA cannot merge recomputation across iterations, so CSE prevention only
    # costs time there (the flax docs recommend prevent_cse=False with scan).
    return not config.scan_blocks
