"""`LlamaTransformer`: token ids in, float32 next-token logits out.

embedding -> (embedding dropout) -> TransformerBlockStack -> RMSNorm -> LM head (its own
weights, or the transposed embedding with `tie_embeddings`) -> (soft cap). Parameters are
float32; activations are in `config.dtype`. With `decode=True` the attention layers read and
write the "cache" collection (see `llama_fdl.model.kv_cache`), one chunk of tokens per call.

Logical axis names of the parameters here: embedding ("vocab", "embed"), head kernel
("embed", "vocab"), head bias ("vocab",), final norm ("norm",); the logits are constrained to
("batch", "length", "vocab"). The blocks' names are listed in `llama_fdl.model.blocks`, plus the
leading "layers" axis of scanned parameters.

Shape legend: B batch, S sequence, T = B * S tokens, D embedding_dim, V vocab_size.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from llama_fdl.model.blocks import RESIDUAL_AXES, default_positions
from llama_fdl.model.config import LlamaConfig
from llama_fdl.model.initializers import kernel_initializer
from llama_fdl.model.masks import resolve_segment_ids
from llama_fdl.model.norm import RMSNorm
from llama_fdl.model.stack import TransformerBlockStack

LOGITS_AXES = ("batch", "length", "vocab")


class LlamaTransformer(nn.Module):
    """A Llama-style decoder-only language model."""

    config: LlamaConfig

    @nn.compact
    def __call__(
        self,
        idx: jax.Array,
        pos_idx: jax.Array | None = None,
        document_borders: jax.Array | None = None,
        train: bool = False,
        segment_ids: jax.Array | None = None,
        decode: bool = False,
    ) -> jax.Array:
        """Logits [B, S, V] in float32.

        Args:
          idx: [B, S] int token ids.
          pos_idx: [B, S] int positions for rotary; default 0..S-1 per row. Packed batches pass
            positions that restart at every document.
          document_borders: [B, S] bool, True at the first token of each document (xlstm_jax
            convention). Used only with `mask_across_document_boundaries`.
          train: enables dropout, which then needs a "dropout" rng.
          segment_ids: [B, S] int, one id per packed document, 0 for padding (seqio convention).
            Used only with `mask_across_document_boundaries`, except when decoding.
          decode: run on the next S tokens of sequences whose earlier tokens are in the "cache"
            collection (pass it with `mutable=["cache"]`). Then `pos_idx` defaults to the cache
            slots (right only without left padding), `segment_ids` (default all 1) mark padding
            with 0, which is never attended to, and with `mask_across_document_boundaries` a
            token sees only its own segment. `document_borders` cannot be used: a border's
            document count would restart with every chunk.
        """
        cfg = self.config
        _check_inputs(idx, pos_idx=pos_idx, document_borders=document_borders, segment_ids=segment_ids)
        batch, seq_len = idx.shape
        if decode:
            pos_BS, segment_ids_BS = self._decode_inputs(idx, pos_idx, document_borders, segment_ids)
        else:
            pos_BS = default_positions(batch, seq_len) if pos_idx is None else pos_idx
            segment_ids_BS = resolve_segment_ids(
                segment_ids, document_borders, cfg.mask_across_document_boundaries
            )

        embed = nn.Embed(
            num_embeddings=cfg.vocab_size,
            features=cfg.embedding_dim,
            dtype=cfg._dtype,
            param_dtype=jnp.float32,
            embedding_init=nn.with_logical_partitioning(
                kernel_initializer(
                    cfg, "embedding", nn.initializers.variance_scaling(1.0, "fan_in", "normal", out_axis=0)
                ),
                ("vocab", "embed"),
            ),
            name="embed",
        )
        x_BSD = embed(idx)
        if train and cfg.add_embedding_dropout and cfg.dropout_rate > 0.0:
            x_BSD = nn.Dropout(rate=cfg.dropout_rate, deterministic=False)(x_BSD)
        x_BSD = nn.with_logical_constraint(x_BSD, RESIDUAL_AXES)

        stack = TransformerBlockStack(cfg, name="block_stack")
        x_BSD = stack(x_BSD, pos_BS, train=train, segment_ids=segment_ids_BS, decode=decode)
        x_BSD = RMSNorm(dtype=cfg._dtype, eps=cfg.norm_eps, name="final_norm")(x_BSD)
        # A 2-D matmul over the flattened tokens, as in the blocks (see llama_fdl.model.blocks).
        x_TD = x_BSD.reshape(batch * seq_len, cfg.embedding_dim)
        if cfg.tie_embeddings:
            logits_TV = embed.attend(x_TD)
        else:
            logits_TV = nn.Dense(
                features=cfg.vocab_size,
                use_bias=cfg.use_bias,
                dtype=cfg._dtype,
                param_dtype=jnp.float32,
                kernel_init=nn.with_logical_partitioning(
                    kernel_initializer(cfg, "head", nn.initializers.lecun_normal()), ("embed", "vocab")
                ),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("vocab",)),
                name="lm_head",
            )(x_TD)
        logits_BSV = logits_TV.reshape(batch, seq_len, cfg.vocab_size).astype(jnp.float32)
        if cfg.logits_soft_cap is not None:
            cap = cfg.logits_soft_cap
            logits_BSV = cap * jnp.tanh(logits_BSV / cap)
        return nn.with_logical_constraint(logits_BSV, LOGITS_AXES)

    def _decode_inputs(self, idx, pos_idx, document_borders, segment_ids) -> tuple[jax.Array, jax.Array]:
        """Positions and raw segment ids of a decoding call (see `__call__`)."""
        if not self.config.causal:
            raise ValueError("Decoding needs a causal model; this LlamaConfig has causal=False.")
        if document_borders is not None:
            raise ValueError("Decoding takes segment_ids, not document_borders; convert them first.")
        batch, seq_len = idx.shape
        if segment_ids is None:
            segment_ids = jnp.ones((batch, seq_len), jnp.int32)
        if pos_idx is None:
            # The first layer's cache index is where this chunk lands (all layers agree).
            cache = self.variables.get("cache", {})
            start = _first_index(cache) if cache else 0
            pos_idx = start + default_positions(batch, seq_len)
        return pos_idx, segment_ids


def _first_index(cache) -> jax.Array:
    """The write index of the first attention layer's cache (a scalar, or [L] when scanned)."""
    indices = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(cache) if path[-1].key == "index"]
    return jnp.ravel(indices[0])[0]


def _check_inputs(idx: jax.Array, **per_token: jax.Array | None) -> None:
    """Raises ValueError naming the input whose shape or dtype cannot work."""
    if idx.ndim != 2:
        raise ValueError(f"idx must be [batch, seq_len] token ids; got shape {idx.shape}.")
    if not jnp.issubdtype(idx.dtype, jnp.integer):
        raise ValueError(f"idx must hold integer token ids; got dtype {idx.dtype}.")
    for name, value in per_token.items():
        if value is not None and value.shape != idx.shape:
            raise ValueError(f"{name} must have the shape of idx {idx.shape}; got {value.shape}.")
