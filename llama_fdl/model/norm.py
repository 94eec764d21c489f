"""RMSNorm, the normalization used before every sublayer, on q/k heads, and before the head.

Shape legend: B batch, S sequence, D the normalized (last) axis.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * scale over the last axis, with a learned float32 scale.

    The statistics are taken in float32 even for bfloat16/float16 inputs, because the mean of
    squares overflows or loses precision in 16-bit floats; the result is cast back to `dtype`.
    """

    dtype: jnp.dtype = jnp.float32
    """Dtype of the output."""
    eps: float = 1e-6
    """Epsilon inside the square root (`LlamaConfig.norm_eps`)."""

    @nn.compact
    def __call__(self, x_BSD: jax.Array) -> jax.Array:
        scale_D = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
            (x_BSD.shape[-1],),
            jnp.float32,
        )
        x32_BSD = x_BSD.astype(jnp.float32)
        inv_rms_BS1 = jax.lax.rsqrt(jnp.mean(jnp.square(x32_BSD), axis=-1, keepdims=True) + self.eps)
        return (x32_BSD * inv_rms_BS1 * scale_D).astype(self.dtype)
