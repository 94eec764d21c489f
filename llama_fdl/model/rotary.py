"""Rotary position embeddings in the "rotate halves" convention of HF `transformers` Llama.

Channel i of a head is paired with channel i + H/2 (not with its neighbour, as in the interleaved
convention of the original RoPE paper), so HF q/k projection weights load without permutation.

Shape legend: B batch, S sequence, N heads, H head_dim, K = H // 2 rotation frequencies.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from llama_fdl.model.config import RopeScaling


def inverse_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None = None) -> np.ndarray:
    """theta ** (-2k / head_dim) for k = 0..K-1 (HF's default rope), then Llama 3's scaling.

    Computed in float32 NumPy once per trace, as HF computes them in float32 torch.
    """
    exponent_K = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
    inv_freq_K = (1.0 / (np.float32(theta) ** exponent_K)).astype(np.float32)
    if scaling is None:
        return inv_freq_K
    old_len = scaling.original_max_position_embeddings
    low_freq_wavelen = old_len / scaling.low_freq_factor
    high_freq_wavelen = old_len / scaling.high_freq_factor
    wavelen_K = 2 * math.pi / inv_freq_K
    scaled_K = np.where(wavelen_K > low_freq_wavelen, inv_freq_K / scaling.factor, inv_freq_K)
    smooth_K = (old_len / wavelen_K - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    smoothed_K = (1 - smooth_K) * scaled_K / scaling.factor + smooth_K * scaled_K
    medium_K = (wavelen_K >= high_freq_wavelen) & (wavelen_K <= low_freq_wavelen)
    return np.where(medium_K, smoothed_K, scaled_K).astype(np.float32)


def rotary_angles(
    pos_BS: jax.Array, head_dim: int, theta: float, scaling: RopeScaling | None = None
) -> tuple[jax.Array, jax.Array]:
    """sin and cos of position * frequency, each [B, S, K], in float32."""
    inv_freq_K = jnp.asarray(inverse_frequencies(head_dim, theta, scaling))
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
