"""What a transformer block recomputes in the backward pass instead of keeping.

`ParallelConfig.remat` names it: nothing ("none"); the elementwise work between the matmuls
("minimal", the default: every matmul's and fused attention kernel's output is kept, the norms,
rotary embedding, softmax and SwiGLU gating are recomputed from them); the whole block ("full",
or "dots_saveable", which keeps the matmul outputs but recomputes a fused attention kernel),
only its attention or only its feed-forward sub-layer ("attention", "ffn"), or each sub-layer
on its own ("attention_and_ffn", which keeps the residual stream between them).
The sub-layer choices are what xlstm-jax's module-name lists `["AttnBlock"]`, `["FFNBlock"]` and
`["AttnBlock", "FFNBlock"]` do; `["TransformerBlock"]` is "full".
"""

from __future__ import annotations

import jax
from flax import linen as nn

from llama_fdl.model.config import LlamaConfig

_KERNELS = (
    "custom_vjp_call",  # a function with its own backward rule, as the fused attention kernels
    # are: what its forward saved is kept, so the kernel does not run again
    "dot_product_attention_fwd",  # cuDNN's fused attention, in case it is bound directly
    "pallas_call",
)


def keep_matmuls_and_attention_kernels(prim, *args, **params) -> bool:
    """The "minimal" policy: keep what matmuls and fused attention kernels computed.

    What it recomputes is elementwise and cheap. Under `scan_blocks` that is faster than keeping
    it, not only smaller: every kept value is copied into a stacked per-block buffer in the
    forward loop and sliced out again in the backward one (measured in docs/PERFORMANCE.md).
    """
    return jax.checkpoint_policies.dots_saveable(prim, *args, **params) or prim.name.startswith(_KERNELS)


_WHOLE_BLOCK = {
    "full": None,  # save nothing: recompute the whole block
    "minimal": keep_matmuls_and_attention_kernels,
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
