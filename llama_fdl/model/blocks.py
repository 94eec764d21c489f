"""One transformer block: pre-norm self-attention and pre-norm SwiGLU feed-forward, with residuals.

Logical axis names (mapped to mesh axes by the rules table in `llama_fdl.sharding`):
- parameters: "embed" (residual width D), "heads" (N), "kv_heads" (K), "head_dim" (H), "mlp" (F),
  "norm" (the axis of every RMSNorm scale);
- activations: ("batch", "length", "embed") at block boundaries, ("batch", "length", "heads",
  "head_dim") for q, ("batch", "length", "kv_heads", "head_dim") for k and v, ("batch", "length",
  "mlp") for the SwiGLU hidden units.

Shape legend: B batch, S sequence, T keys (S, or the cache's slots when decoding), D
embedding_dim, N query heads, K key/value heads, H head_dim, F ffn_hidden_dim, R = H // 2 rotary
frequencies. In the feed-forward block's flattened 2-D matmuls T is instead the B * S tokens.

Every projection runs as one 2-D matmul over the flattened tokens ([B * S, in] @ [in, out]). XLA:CPU
turns a 3-D `[B, S, D]` contraction's weight gradient (a sum over both B and S) into a transposing
copy of the [B, S, F] cotangent, fused with whatever elementwise work precedes it; that copy cost
more than the matmuls themselves (`benchmarks/`, docs/PERFORMANCE.md). The 2-D form has none, and
the reshapes around it are free.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import linen as nn

from llama_fdl.model.attention_backends import attend, masked_attention
from llama_fdl.model.config import LlamaConfig
from llama_fdl.model.initializers import Role, kernel_initializer
from llama_fdl.model.kv_cache import KV_AXES, KVCache
from llama_fdl.model.norm import RMSNorm
from llama_fdl.model.remat import remat_sublayer
from llama_fdl.model.rotary import apply_rotary, rotary_angles

RESIDUAL_AXES = ("batch", "length", "embed")
HEAD_AXES = ("batch", "length", "heads", "head_dim")
MLP_AXES = ("batch", "length", "mlp")
INTERMEDIATES = "intermediates"
"""The collection the blocks sow their output statistics into (apply with mutable=[INTERMEDIATES])."""


def _kernel_init(cfg: LlamaConfig, role: Role, names: tuple[str, ...]) -> nn.initializers.Initializer:
    init = kernel_initializer(cfg, role, nn.initializers.lecun_normal())
    return nn.with_logical_partitioning(init, names)


class HeadsDense(nn.Module):
    """A linear map contracting the last `num_contracted` input axes into `features` axes.

    flax's DenseGeneral is not used because it initializes a flattened 2-D kernel and unboxes it
    with the 3-axis logical names, which fails under a mesh with partitioning rules.
    """

    features: tuple[int, ...]
    """Output axes, e.g. (N, H) for q/k/v or (D,) for the output projection."""
    num_contracted: int
    """How many trailing input axes are summed over: 1 for D, 2 for (N, H)."""
    kernel_axes: tuple[str, ...]
    bias_axes: tuple[str, ...]
    use_bias: bool
    dtype: jnp.dtype
    kernel_init: nn.initializers.Initializer | None = None
    """None: lecun normal with the fan-in taken over all contracted axes."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n_in = self.num_contracted
        contracted, leading = x.shape[-n_in:], x.shape[:-n_in]
        # lecun_normal with the fan-in taken over all contracted axes, as for a flattened kernel.
        init = self.kernel_init or nn.initializers.variance_scaling(
            1.0,
            "fan_in",
            "truncated_normal",
            in_axis=tuple(range(n_in)),
            out_axis=tuple(range(n_in, n_in + len(self.features))),
        )
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(init, self.kernel_axes),
            (*contracted, *self.features),
            jnp.float32,
        )
        # One 2-D matmul over the flattened tokens (see the module docstring).
        x_TI = x.reshape(-1, math.prod(contracted)).astype(self.dtype)
        kernel_IO = kernel.reshape(math.prod(contracted), math.prod(self.features)).astype(self.dtype)
        y = (x_TI @ kernel_IO).reshape(*leading, *self.features)
        if self.use_bias:
            bias = self.param("bias", _bias_init(self.bias_axes), self.features, jnp.float32)
            y = y + bias.astype(self.dtype)
        return y


def _bias_init(names: tuple[str, ...]) -> nn.initializers.Initializer:
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


def default_positions(batch: int, seq_len: int) -> jax.Array:
    """Positions 0..S-1 for every row: [B, S] int32."""
    return jnp.broadcast_to(jnp.arange(seq_len, dtype=jnp.int32), (batch, seq_len))


class SelfAttentionBlock(nn.Module):
    """x + dropout(attention(RMSNorm(x))) with rotary q/k, optional per-head q/k RMSNorm.

    The scores are scaled by 1/sqrt(head_dim), the width each dot product sums over. With
    `decode=True` keys and values go through a `KVCache` (the "cache" collection) and attention
    runs over every cached token; `segment_ids_BS` are then the raw ids, 0 marking padding.
    """

    config: LlamaConfig
    train: bool = False
    decode: bool = False

    @nn.compact
    def __call__(
        self,
        x_BSD: jax.Array,
        pos_BS: jax.Array | None = None,
        segment_ids_BS: jax.Array | None = None,
    ) -> jax.Array:
        cfg = self.config
        dtype = cfg._dtype
        batch, seq_len, _ = x_BSD.shape
        if isinstance(pos_BS, tuple | list):
            raise ValueError(
                "SelfAttentionBlock takes [B, S] positions, not xlstm-jax's precomputed (sin, cos) "
                "freqs; pass pos_idx and the rotary angles are computed inside."
            )
        if pos_BS is None:
            pos_BS = default_positions(batch, seq_len)

        h_BSD = RMSNorm(dtype=dtype, eps=cfg.norm_eps, name="norm")(x_BSD)
        project = functools.partial(
            HeadsDense,
            num_contracted=1,
            use_bias=cfg.use_bias or cfg.qkv_bias,
            dtype=dtype,
            kernel_init=kernel_initializer(cfg, "input", None),
        )
        query = project(
            features=(cfg.num_heads, cfg.head_dim),
            kernel_axes=("embed", "heads", "head_dim"),
            bias_axes=("heads", "head_dim"),
            name="query",
        )
        key_value = functools.partial(
            project,
            features=(cfg.kv_heads, cfg.head_dim),
            kernel_axes=("embed", "kv_heads", "head_dim"),
            bias_axes=("kv_heads", "head_dim"),
        )
        q_BSNH = query(h_BSD)
        k_BSKH = key_value(name="key")(h_BSD)
        v_BSKH = key_value(name="value")(h_BSD)
        if cfg.qk_norm:
            q_BSNH = RMSNorm(dtype=dtype, eps=cfg.norm_eps, name="query_norm")(q_BSNH)
            k_BSKH = RMSNorm(dtype=dtype, eps=cfg.norm_eps, name="key_norm")(k_BSKH)

        sin_BSR, cos_BSR = rotary_angles(pos_BS, cfg.head_dim, cfg.theta, cfg.rope_scaling)
        q_BSNH = nn.with_logical_constraint(apply_rotary(q_BSNH, sin_BSR, cos_BSR), HEAD_AXES)
        k_BSKH = nn.with_logical_constraint(apply_rotary(k_BSKH, sin_BSR, cos_BSR), KV_AXES)
        v_BSKH = nn.with_logical_constraint(v_BSKH, KV_AXES)

        scale = 1.0 / math.sqrt(cfg.head_dim)
        if self.decode:
            # Decoding attends over the cache's slots with an explicit mask; the flash kernels
            # take as many keys as queries, so every backend uses the einsum form here.
            k_BTKH, v_BTKH, mask_BST = KVCache(cfg.mask_across_document_boundaries, name="cache")(
                k_BSKH, v_BSKH, segment_ids_BS
            )
            o_BSNH = masked_attention(q_BSNH, k_BTKH, v_BTKH, mask_BST, scale)
        else:
            o_BSNH = attend(
                q_BSNH,
                k_BSKH,
                v_BSKH,
                segment_ids_BS=segment_ids_BS,
                causal=cfg.causal,
                scale=scale,
                backend=cfg.attention_backend,
            )
        out_BSD = HeadsDense(
            features=(cfg.embedding_dim,),
            num_contracted=2,
            kernel_axes=("heads", "head_dim", "embed"),
            bias_axes=("embed",),
            use_bias=cfg.use_bias,
            dtype=dtype,
            kernel_init=kernel_initializer(cfg, "residual_output", None),
            name="out",
        )(o_BSNH)
        out_BSD = _dropout(cfg, self.train, out_BSD)
        _record(self, "attn_out", out_BSD)
        return nn.with_logical_constraint(x_BSD + out_BSD, RESIDUAL_AXES)


class FFNBlock(nn.Module):
    """x + dropout(down(silu(gate(RMSNorm(x))) * up(RMSNorm(x)))) with hidden width F."""

    config: LlamaConfig
    train: bool = False

    @nn.compact
    def __call__(self, x_BSD: jax.Array) -> jax.Array:
        cfg = self.config
        dtype = cfg._dtype
        batch, seq_len, _ = x_BSD.shape
        # Tokens flattened: 2-D matmuls (see the module docstring).
        h_TD = RMSNorm(dtype=dtype, eps=cfg.norm_eps, name="norm")(x_BSD).reshape(
            batch * seq_len, cfg.embedding_dim
        )
        widen = functools.partial(
            nn.Dense,
            features=cfg.ffn_hidden_dim,
            use_bias=cfg.use_bias,
            dtype=dtype,
            param_dtype=jnp.float32,
            kernel_init=_kernel_init(cfg, "input", ("embed", "mlp")),
            bias_init=_bias_init(("mlp",)),
        )
        gate_TF = widen(name="gate")(h_TD)
        up_TF = widen(name="up")(h_TD)
        hidden_BSF = (nn.silu(gate_TF) * up_TF).reshape(batch, seq_len, cfg.ffn_hidden_dim)
        hidden_TF = nn.with_logical_constraint(hidden_BSF, MLP_AXES).reshape(batch * seq_len, -1)
        out_TD = nn.Dense(
            features=cfg.embedding_dim,
            use_bias=cfg.use_bias,
            dtype=dtype,
            param_dtype=jnp.float32,
            kernel_init=_kernel_init(cfg, "residual_output", ("mlp", "embed")),
            bias_init=_bias_init(("embed",)),
            name="down",
        )(hidden_TF)
        out_BSD = _dropout(cfg, self.train, out_TD.reshape(x_BSD.shape))
        _record(self, "ffn_out", out_BSD)
        return nn.with_logical_constraint(x_BSD + out_BSD, RESIDUAL_AXES)


class TransformerBlock(nn.Module):
    """SelfAttentionBlock then FFNBlock."""

    config: LlamaConfig
    train: bool = False
    decode: bool = False

    @nn.compact
    def __call__(
        self,
        x_BSD: jax.Array,
        pos_BS: jax.Array | None = None,
        segment_ids_BS: jax.Array | None = None,
    ) -> jax.Array:
        cfg = self.config
        attention_cls = remat_sublayer(SelfAttentionBlock, "attention", cfg, self.decode)
        x_BSD = attention_cls(cfg, self.train, self.decode, name="attention")(x_BSD, pos_BS, segment_ids_BS)
        ffn_cls = remat_sublayer(FFNBlock, "ffn", cfg, self.decode)
        return ffn_cls(cfg, self.train, name="ffn")(x_BSD)


def _dropout(cfg: LlamaConfig, train: bool, x: jax.Array) -> jax.Array:
    """Dropout with the "dropout" rng while training; the identity otherwise."""
    if not train or cfg.dropout_rate == 0.0:
        return x
    return nn.Dropout(rate=cfg.dropout_rate, deterministic=False)(x)


def _record(module: nn.Module, prefix: str, out_BSD: jax.Array) -> None:
    """Sows xlstm-jax's statistics of a sub-layer's output (before the residual add): the std over
    D averaged over tokens, and the largest |value|. Only when "intermediates" is mutable, so a
    normal step traces nothing extra."""
    if not module.is_mutable_collection(INTERMEDIATES):
        return
    out_BSD = out_BSD.astype(jnp.float32)
    module.sow(INTERMEDIATES, f"{prefix}_std", jnp.std(out_BSD, axis=-1).mean())
    module.sow(INTERMEDIATES, f"{prefix}_abs_max", jnp.max(jnp.abs(out_BSD)))
