"""The stack of transformer blocks, scanned or unrolled, and conversion between the two layouts.

With `scan_blocks=True` the blocks run under `nn.scan` and their parameters are stacked along a
leading "layers" axis under one name, `blocks`; otherwise they are `block_0` .. `block_{n-1}`.
Both hold the same numbers, so `scanned_to_unrolled_params` and `unrolled_to_scanned_params`
move a parameter tree (plain arrays or Partitioned boxes) from one layout to the other.

Shape legend: B batch, S sequence, D embedding_dim, L num_blocks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from llama_fdl.model.blocks import INTERMEDIATES, TransformerBlock
from llama_fdl.model.config import LlamaConfig
from llama_fdl.model.masks import resolve_segment_ids
from llama_fdl.model.remat import remat_block

SCANNED_NAME = "blocks"
LAYERS_AXIS = "layers"
_UNROLLED_NAME = re.compile(r"^block_(\d+)$")


def _scan_body(block: nn.Module, x_BSD, pos_BS, segment_ids_BS):
    return block(x_BSD, pos_BS, segment_ids_BS), None


class TransformerBlockStack(nn.Module):
    """`config.num_blocks` TransformerBlocks applied in order.

    The positional arguments are xlstm-jax's (`x, pos_idx, document_borders, train`), so a call
    written for its stack means the same here; seqio's integer segment ids are keyword-only.
    """

    config: LlamaConfig

    @nn.compact
    def __call__(
        self,
        x_BSD: jax.Array,
        pos_idx: jax.Array | None = None,
        document_borders: jax.Array | None = None,
        train: bool = False,
        *,
        segment_ids: jax.Array | None = None,
        decode: bool = False,
    ) -> jax.Array:
        """x_BSD through the blocks.

        Args:
          pos_idx: [B, S] int rotary positions; default 0..S-1 per row.
          document_borders: [B, S] bool, True at each document's first token (xlstm-jax's
            convention); turned into segment ids only with `mask_across_document_boundaries`,
            as `LlamaTransformer` does.
          segment_ids: [B, S] int ids that attention respects as given (equal ids see each
            other); when decoding, 0 marks padding.
        """
        cfg = self.config
        if segment_ids is not None and jnp.issubdtype(segment_ids.dtype, jnp.bool_):
            raise ValueError(
                "TransformerBlockStack got boolean segment_ids; True-at-document-start flags are "
                "document_borders (the third positional argument), segment ids are integers."
            )
        if document_borders is not None:
            if decode:
                raise ValueError("Decoding takes segment_ids, not document_borders; convert them first.")
            masking = cfg.mask_across_document_boundaries
            segment_ids = resolve_segment_ids(segment_ids, document_borders, masking)
        pos_BS, segment_ids_BS = pos_idx, segment_ids
        block_cls = remat_block(TransformerBlock, cfg, decode)
        if not cfg.scan_blocks:
            for i in range(cfg.num_blocks):
                x_BSD = block_cls(cfg, train, decode, name=f"block_{i}")(x_BSD, pos_BS, segment_ids_BS)
            return x_BSD
        scan = nn.scan(
            _scan_body,
            # Each layer's KV cache is stacked along the same leading axis as its parameters.
            variable_axes={"params": 0, "cache": 0, INTERMEDIATES: 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast, nn.broadcast),
            length=cfg.num_blocks,
            metadata_params={nn.PARTITION_NAME: LAYERS_AXIS},
        )
        x_BSD, _ = scan(block_cls(cfg, train, decode, name=SCANNED_NAME), x_BSD, pos_BS, segment_ids_BS)
        return x_BSD


def per_block_intermediates(intermediates: Mapping[str, Any]) -> dict[str, jax.Array]:
    """`{"block_{i}/attn_out_std": scalar, ...}` from a LlamaTransformer's "intermediates"
    collection, scanned (values stacked along the layers) or unrolled."""
    stack = intermediates["block_stack"]
    out = {}
    if SCANNED_NAME in stack:
        for part in stack[SCANNED_NAME].values():
            for name, (values_L,) in part.items():
                out.update({f"block_{i}/{name}": values_L[i] for i in range(values_L.shape[0])})
        return out
    for block, parts in stack.items():
        for part in parts.values():
            out.update({f"{block}/{name}": value for name, (value,) in part.items()})
    return out


def scanned_to_unrolled_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Splits every `blocks` subtree (leading "layers" axis) into `block_0` .. `block_{L-1}`."""
    converted, found = _convert(params, _unstack_blocks)
    if not found:
        raise ValueError(
            f"No scanned '{SCANNED_NAME}' subtree found; these params look unrolled already "
            "(built with scan_blocks=False)."
        )
    return converted


def unrolled_to_scanned_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Stacks every `block_0` .. `block_{L-1}` group into one `blocks` subtree."""
    converted, found = _convert(params, _stack_blocks)
    if not found:
        raise ValueError(
            "No unrolled 'block_0', 'block_1', ... subtrees found; these params look scanned "
            "already (built with scan_blocks=True)."
        )
    return converted


def _convert(tree: Mapping[str, Any], convert_level) -> tuple[dict[str, Any], bool]:
    """Applies `convert_level` to every mapping in the tree, innermost first."""
    found = False
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            value, found_below = _convert(value, convert_level)
            found |= found_below
        out[key] = value
    out, found_here = convert_level(out)
    return out, found or found_here


def _unstack_blocks(level: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    if not isinstance(level.get(SCANNED_NAME), Mapping):
        return level, False
    stacked = level.pop(SCANNED_NAME)
    sizes = {_value(leaf).shape[0] for leaf in _leaves(stacked)}
    if len(sizes) != 1:
        raise ValueError(f"Scanned params disagree on the number of layers: {sorted(sizes)}.")
    for i in range(sizes.pop()):
        level[f"block_{i}"] = jax.tree.map(lambda leaf, i=i: _take(leaf, i), stacked, is_leaf=_is_box)
    return level, True


def _stack_blocks(level: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    indices = sorted(int(m.group(1)) for k in level if (m := _UNROLLED_NAME.match(k)))
    if not indices:
        return level, False
    if indices != list(range(len(indices))):
        raise ValueError(f"Unrolled blocks must be block_0 .. block_{{L-1}}; got indices {indices}.")
    blocks = [level.pop(f"block_{i}") for i in indices]
    level[SCANNED_NAME] = jax.tree.map(lambda *leaves: _stack(leaves), *blocks, is_leaf=_is_box)
    return level, True


def _is_box(x: Any) -> bool:
    return isinstance(x, nn.Partitioned)


def _leaves(tree: Any) -> list[Any]:
    return jax.tree.leaves(tree, is_leaf=_is_box)


def _value(leaf: Any) -> Any:
    return leaf.value if _is_box(leaf) else leaf


def _take(leaf: Any, i: int) -> Any:
    if _is_box(leaf):
        if leaf.names[0] != LAYERS_AXIS:
            raise ValueError(f"Scanned param axes {leaf.names} do not start with {LAYERS_AXIS!r}.")
        return leaf.replace(value=leaf.value[i], names=leaf.names[1:])
    return leaf[i]


def _stack(leaves: tuple[Any, ...]) -> Any:
    if _is_box(leaves[0]):
        value = jnp.stack([leaf.value for leaf in leaves])
        return leaves[0].replace(value=value, names=(LAYERS_AXIS, *leaves[0].names))
    return jnp.stack(leaves)
