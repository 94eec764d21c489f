"""Rotary position embeddings in the "rotate halves" convention of HF `transformers` Llama.

Channel i of a head is paired with channel i + H/2 (not with its neighbour, as in the interleaved
convention of the original RoPE paper), so HF q/k projection weights load without permutation.

Shape legend: B batch, S sequence, N heads, H head_dim, K = H // 2 rotation frequencies.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def rotary_angles(pos_BS: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """sin and cos of position * frequency, each [B, S, K], in float32.

    Frequencies are theta ** (-2k / head_dim) for k = 0..K-1, as in HF's default rope.
    """
    exponent_K = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
    inv_freq_K = 1.0 / (jnp.float32(theta) ** exponent_K)
    angles_BSK = pos_BS.astype(jnp.float32)[..., None] * inv_freq_K
    return jnp.sin(angles_BSK), jnp.cos(angles_BSK)


def apply_rotary(x_BSNH: jax.Array, sin_BSK: jax.Array, cos_BSK: jax.Array) -> jax.Array:
    """Rotates each (x[i], x[i + K]) pair by its angle; computed in float32, returned in x's dtype."""
    x1_BSNK, x2_BSNK = jnp.split(x_BSNH.astype(jnp.float32), 2, axis=-1)
    sin_BS1K, cos_BS1K = sin_BSK[:, :, None, :], cos_BSK[:, :, None, :]
    rotated_BSNH = jnp.concatenate(
        [x1_BSNK * cos_BS1K - x2_BSNK * sin_BS1K, x2_BSNK * cos_BS1K + x1_BSNK * sin_BS1K], axis=-1
    )
    return rotated_BSNH.astype(x_BSNH.dtype)
