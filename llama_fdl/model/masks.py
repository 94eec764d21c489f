"""Which keys each query may see: causal order and packed-document (segment) boundaries.

Two input conventions describe packed documents:
- seqio: `segment_ids` [B, S] int, 1, 2, 3, ... per packed document and 0 for padding;
- xlstm_jax: `document_borders` [B, S] bool, True at the first token of each document.
Both become one `segment_ids` array; a query attends to a key only if their ids are equal.

Shape legend: B batch, S query positions, T key positions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def resolve_segment_ids(
    segment_ids_BS: jax.Array | None,
    document_borders_BS: jax.Array | None,
    mask_across_document_boundaries: bool,
) -> jax.Array | None:
    """The segment ids attention should respect, or None for one unmasked document per row.

    With `mask_across_document_boundaries=False` the inputs are deliberately not used: the config
    asks for attention across packed documents. With both inputs given, a new segment starts
    wherever either one says a document starts.
    """
    if not mask_across_document_boundaries:
        return None
    if document_borders_BS is None:
        return None if segment_ids_BS is None else segment_ids_BS.astype(jnp.int32)
    starts_BS = document_borders_BS.astype(bool)
    if segment_ids_BS is not None:
        # A change of id between neighbours is a document start too; position 0 needs no start
        # marker because every token before the first start shares id 0.
        changed_BS = jnp.pad(segment_ids_BS[:, 1:] != segment_ids_BS[:, :-1], ((0, 0), (1, 0)))
        starts_BS = starts_BS | changed_BS
    return jnp.cumsum(starts_BS.astype(jnp.int32), axis=1)


def attention_mask(seq_len: int, causal: bool, segment_ids_BS: jax.Array | None) -> jax.Array | None:
    """Boolean [B or 1, S, T] mask, True where the query may attend; None when nothing is masked."""
    mask_BST = None
    if causal:
        mask_BST = jnp.tril(jnp.ones((seq_len, seq_len), dtype=bool))[None]
    if segment_ids_BS is not None:
        same_BST = segment_ids_BS[:, :, None] == segment_ids_BS[:, None, :]
        mask_BST = same_BST if mask_BST is None else mask_BST & same_BST
    return mask_BST
