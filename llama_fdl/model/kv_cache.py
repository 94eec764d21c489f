"""The key/value cache of one attention layer, in Flax's "cache" collection.

Decoding runs the model on a few new tokens at a time (`LlamaTransformer(...)(idx, decode=True)`
with `mutable=["cache"]`). Each attention layer keeps the keys and values of every token it has
seen in fixed-size buffers of T slots; a call writes its S new tokens at the next free slots and
attends over all T slots under a mask. Slot positions are shared by all rows, so prompts of
different lengths are left-padded: padding carries segment id 0 and is never attended to, and
rotary positions come from the caller, not from the slot (see `llama_fdl.model.sampling`).

Flax's own pattern: `model.init(..., decode=True)` (or `jax.eval_shape` of it) sizes the cache
from the input's length and leaves it empty; the init pass itself attends within its input only.

Shape legend: B batch, S new tokens, T cache slots, K key/value heads, H head_dim.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

KV_AXES = ("batch", "length", "kv_heads", "head_dim")


class KVCache(nn.Module):
    """Appends keys, values and segment ids to the cache; returns all of them and the mask."""

    document_masking: bool
    """Queries see only keys of their own segment (LlamaConfig.mask_across_document_boundaries)."""

    @nn.compact
    def __call__(
        self, k_BSKH: jax.Array, v_BSKH: jax.Array, segment_ids_BS: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(keys [B, T, K, H], values [B, T, K, H], mask [B, S, T]) to attend with.

        Segment id 0 marks padding: such keys are never attended to. The caller must leave room:
        writing past slot T would be clamped by dynamic_update_slice and overwrite earlier slots.
        """
        initialized = self.has_variable("cache", "key")
        key = self.variable("cache", "key", jnp.zeros, k_BSKH.shape, k_BSKH.dtype)
        value = self.variable("cache", "value", jnp.zeros, v_BSKH.shape, v_BSKH.dtype)
        segments = self.variable("cache", "segment_ids", jnp.zeros, segment_ids_BS.shape, jnp.int32)
        index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
        segment_ids_BS = segment_ids_BS.astype(jnp.int32)
        if not initialized:  # the init pass: size the buffers, attend within the input only
            return k_BSKH, v_BSKH, _mask(segment_ids_BS, segment_ids_BS, 0, self.document_masking)

        start = index.value
        key.value = nn.with_logical_constraint(
            jax.lax.dynamic_update_slice(key.value, k_BSKH.astype(key.value.dtype), (0, start, 0, 0)),
            KV_AXES,
        )
        value.value = nn.with_logical_constraint(
            jax.lax.dynamic_update_slice(value.value, v_BSKH.astype(value.value.dtype), (0, start, 0, 0)),
            KV_AXES,
        )
        segments.value = jax.lax.dynamic_update_slice(segments.value, segment_ids_BS, (0, start))
        index.value = start + k_BSKH.shape[1]
        mask_BST = _mask(segment_ids_BS, segments.value, start, self.document_masking)
        return key.value, value.value, mask_BST


def _mask(query_ids_BS, key_ids_BT, start, document_masking: bool) -> jax.Array:
    """Query s (slot start + s) may see slot t <= start + s holding a non-padding key (of its own
    segment, with document masking)."""
    query_slot_S = start + jnp.arange(query_ids_BS.shape[1])
    slot_T = jnp.arange(key_ids_BT.shape[1])
    mask_BST = (slot_T[None, None, :] <= query_slot_S[None, :, None]) & (key_ids_BT[:, None, :] != 0)
    if document_masking:
        mask_BST &= key_ids_BT[:, None, :] == query_ids_BS[:, :, None]
    return mask_BST
