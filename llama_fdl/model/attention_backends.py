"""Attention kernels behind `LlamaConfig.attention_backend`, all with one signature.

`attend(q, k, v, segment_ids=..., causal=..., scale=..., backend=...)` computes
softmax(scale * q k^T + mask) v per head, where the mask allows key t for query s when
(not causal or t <= s) and (segment_ids is None or segment_ids[s] == segment_ids[t]).
Keys and values may have fewer heads than the queries (grouped-query attention): query head n
reads key/value head n // (N / K).

- "xla": einsum softmax attention; runs on every platform and is the reference for the others.
- "pallas_triton": JAX's Pallas flash-attention kernel for GPUs
  (`jax.experimental.pallas.ops.gpu.attention.mha`), run in interpret mode off GPU.
- "cudnn": `jax.nn.dot_product_attention(implementation="cudnn")`; GPU only, 16-bit dtypes only.

Shape legend: B batch, S query positions, T key positions, N query heads, K key/value heads
(dividing N), G = N / K query heads per key/value head, H head_dim.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp

from llama_fdl.model.config import ATTENTION_BACKENDS
from llama_fdl.model.masks import attention_mask

# Triton's tl.dot needs every matmul dimension to be at least 16, so the Pallas kernel gets
# sequence lengths padded to a multiple of this and head dims of at least this.
_PALLAS_MIN_BLOCK = 16
# Forward tiles up to 128 (the kernel's default); backward tiles up to 32 (its default), which
# keeps the fused backward kernel within shared memory for head_dim up to 128.
_PALLAS_MAX_FWD_BLOCK = 128
_PALLAS_MAX_BWD_BLOCK = 32
# Query blocks of causal xla attention: 4 skips 3/8 of the score matrix. Measured on a 2-core CPU
# (benchmarks/attention.py): 4 beat 2 and 8 at 256 and 512 positions, 16 was slower again.
_CAUSAL_QUERY_BLOCKS = 4


def attend(
    q_BSNH: jax.Array,
    k_BTKH: jax.Array,
    v_BTKH: jax.Array,
    *,
    segment_ids_BS: jax.Array | None,
    causal: bool,
    scale: float,
    backend: str,
) -> jax.Array:
    """Attention output [B, S, N, H] in the dtype of q, computed by `backend`."""
    if backend == "xla":
        return xla_attention(q_BSNH, k_BTKH, v_BTKH, segment_ids_BS, causal, scale)
    if backend == "pallas_triton":
        # The Pallas kernel wants one key/value head per query head.
        groups = q_BSNH.shape[2] // k_BTKH.shape[2]
        k_BTNH, v_BTNH = (jnp.repeat(x, groups, axis=2) for x in (k_BTKH, v_BTKH))
        return pallas_triton_attention(q_BSNH, k_BTNH, v_BTNH, segment_ids_BS, causal, scale)
    if backend == "cudnn":  # jax.nn.dot_product_attention takes grouped heads as they are
        return cudnn_attention(q_BSNH, k_BTKH, v_BTKH, segment_ids_BS, causal, scale)
    raise ValueError(f"attention backend {backend!r} is not one of {ATTENTION_BACKENDS}.")


def xla_attention(q_BSNH, k_BTKH, v_BTKH, segment_ids_BS, causal: bool, scale: float) -> jax.Array:
    """Plain softmax attention; scores and softmax in float32 whatever the input dtype.

    Causal self-attention runs as `_CAUSAL_QUERY_BLOCKS` blocks of query rows, block i scoring only
    the keys up to its own last row, so the score tiles above the diagonal, which the mask would
    zero anyway, are never computed (3/8 of the scores with 4 blocks). Every row still sees every
    key it may attend to: the softmax is the same, its sums only run in another order. q, k and
    v are laid out heads-first once, not once per block (7% of a step's CPU time at
    experiments.small's shape, docs/PERFORMANCE.md).
    """
    seq_len = q_BSNH.shape[1]
    mask_BST = attention_mask(seq_len, causal, segment_ids_BS)
    if not causal or k_BTKH.shape[1] != seq_len or seq_len < _CAUSAL_QUERY_BLOCKS:
        return masked_attention(q_BSNH, k_BTKH, v_BTKH, mask_BST, scale)
    batch, _, heads, head_dim = q_BSNH.shape
    kv_heads = k_BTKH.shape[2]
    q_BKGSH = q_BSNH.reshape(batch, seq_len, kv_heads, heads // kv_heads, head_dim).transpose(0, 2, 3, 1, 4)
    k_BKTH, v_BKTH = (x.transpose(0, 2, 1, 3) for x in (k_BTKH, v_BTKH))
    bounds = [round(i * seq_len / _CAUSAL_QUERY_BLOCKS) for i in range(_CAUSAL_QUERY_BLOCKS + 1)]
    out_blocks = []
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        scores_BKGST = jnp.einsum(
            "bkgsh,bkth->bkgst",
            q_BKGSH[:, :, :, start:stop],
            k_BKTH[:, :, :stop],
            preferred_element_type=jnp.float32,
        )
        block_mask_BST = mask_BST[:, start:stop, :stop]
        probs_BKGST = _masked_softmax(scores_BKGST * scale, block_mask_BST).astype(v_BKTH.dtype)
        out_blocks.append(jnp.einsum("bkgst,bkth->bkgsh", probs_BKGST, v_BKTH[:, :, :stop]))
    out_BKGSH = jnp.concatenate(out_blocks, axis=3)
    return out_BKGSH.transpose(0, 3, 1, 2, 4).reshape(batch, seq_len, heads, head_dim)


def _masked_softmax(scores_BKGST: jax.Array, mask_BST: jax.Array | None) -> jax.Array:
    """Softmax over the keys; masked scores are finfo.min rather than -inf, so a query whose keys
    are all masked gets a uniform average rather than NaN."""
    if mask_BST is not None:
        scores_BKGST = jnp.where(mask_BST[:, None, None], scores_BKGST, jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(scores_BKGST, axis=-1)


def masked_attention(q_BSNH, k_BTKH, v_BTKH, mask_BST: jax.Array | None, scale: float) -> jax.Array:
    """Softmax attention under an explicit boolean mask [B or 1, S, T] (True: may attend).

    Grouped heads are contracted without repeating keys or values: q is viewed as [B, S, K, G, H].
    A query whose keys are all masked (left padding in a KV cache) gets a uniform average rather
    than NaN, since masked scores are finfo.min rather than -inf.
    """
    batch, seq, heads, head_dim = q_BSNH.shape
    kv_heads = k_BTKH.shape[2]
    q_BSKGH = q_BSNH.reshape(batch, seq, kv_heads, heads // kv_heads, head_dim)
    scores_BKGST = jnp.einsum("bskgh,btkh->bkgst", q_BSKGH, k_BTKH, preferred_element_type=jnp.float32)
    probs_BKGST = _masked_softmax(scores_BKGST * scale, mask_BST).astype(v_BTKH.dtype)
    out_BSKGH = jnp.einsum("bkgst,btkh->bskgh", probs_BKGST, v_BTKH)
    return out_BSKGH.reshape(batch, seq, heads, head_dim)


def pallas_triton_attention(q_BSNH, k_BTNH, v_BTNH, segment_ids_BS, causal: bool, scale: float) -> jax.Array:
    """The Pallas flash-attention kernel, with inputs padded to shapes its tiles accept.

    Padded key positions get a segment id of their own, so real queries never attend to them;
    padded queries are sliced off, so their (finite) outputs and zero cotangents change nothing.
    """
    # Imported here because Pallas pulls in its Triton lowering, which plain xla users never need.
    # jax 0.11 deprecates the module in favour of tokamax (not a dependency here); it still works,
    # so its import-time warning is not turned into an error by strict warning filters.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"jax\.experimental\.pallas\.ops\.gpu\.attention is deprec")
        from jax.experimental.pallas.ops.gpu import attention as pallas_attention

    batch, seq_len, _, head_dim = q_BSNH.shape
    if k_BTNH.shape[1] != seq_len:
        raise ValueError(
            f"pallas_triton attention needs as many keys as queries (self-attention); got "
            f"{seq_len} queries and {k_BTNH.shape[1]} keys."
        )
    padded_len = -(-seq_len // _PALLAS_MIN_BLOCK) * _PALLAS_MIN_BLOCK
    padded_dim = max(head_dim, _PALLAS_MIN_BLOCK)
    pad = ((0, 0), (0, padded_len - seq_len), (0, 0), (0, padded_dim - head_dim))
    q_BPNE, k_BPNE, v_BPNE = (jnp.pad(x, pad) for x in (q_BSNH, k_BTNH, v_BTNH))

    if padded_len != seq_len and segment_ids_BS is None and not causal:
        # Without a causal mask real queries would see the padding; give it its own segment.
        segment_ids_BS = jnp.ones((batch, seq_len), jnp.int32)
    if segment_ids_BS is not None:
        segment_ids_BS = segment_ids_BS.astype(jnp.int32)
        pad_id = jnp.min(segment_ids_BS) - 1
        pad_ids_BQ = jnp.broadcast_to(pad_id, (batch, padded_len - seq_len)).astype(jnp.int32)
        segment_ids_BS = jnp.concatenate([segment_ids_BS, pad_ids_BQ], axis=1)

    fwd_block = _largest_block(padded_len, _PALLAS_MAX_FWD_BLOCK)
    bwd_block = _largest_block(padded_len, _PALLAS_MAX_BWD_BLOCK)
    block_sizes = pallas_attention.BlockSizes(
        block_q=fwd_block,
        block_k=fwd_block,
        block_q_dkv=bwd_block,
        block_kv_dkv=bwd_block,
        block_q_dq=bwd_block,
        block_kv_dq=bwd_block,
    )
    out_BPNE = pallas_attention.mha(
        q_BPNE,
        k_BPNE,
        v_BPNE,
        segment_ids_BS,
        sm_scale=scale,
        causal=causal,
        block_sizes=block_sizes,
        interpret=jax.default_backend() != "gpu",
    )
    return out_BPNE[:, :seq_len, :, :head_dim]


def _largest_block(length: int, largest: int) -> int:
    """The largest power of two in [16, largest] that divides `length` (a multiple of 16)."""
    block = largest
    while length % block:
        block //= 2
    return block


def cudnn_attention(q_BSNH, k_BTKH, v_BTKH, segment_ids_BS, causal: bool, scale: float) -> jax.Array:
    """cuDNN fused attention; document masks go in as a boolean mask, causality as a flag.

    Whether this platform and dtype can run it is checked once per launch, with the config
    (`LlamaConfig.check_platform`), not here in every trace.
    """
    mask_B1ST = None
    if segment_ids_BS is not None:
        mask_B1ST = (segment_ids_BS[:, :, None] == segment_ids_BS[:, None, :])[:, None]
    return jax.nn.dot_product_attention(
        q_BSNH,
        k_BTKH,
        v_BTKH,
        mask=mask_B1ST,
        scale=scale,
        is_causal=causal,
        implementation="cudnn",
    )
