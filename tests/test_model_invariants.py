"""Properties the whole model must have: causality, document isolation, layout independence.

Each equivalence has a control showing the comparison would notice a difference.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from llama_fdl.model import (
    LlamaConfig,
    LlamaTransformer,
    scanned_to_unrolled_params,
    unrolled_to_scanned_params,
)

# Fixed in advance: two float32 computations of the same function, and the smallest change a
# control must show to count as "different".
SAME_ATOL = 1e-5
DIFFERENT = 1e-3
# Rotary relativity recomputes sin/cos at other absolute angles, which float32 rounds differently.
SHIFT_ATOL = 1e-4


def tiny(**overrides) -> LlamaConfig:
    return LlamaConfig(**{"vocab_size": 64, "embedding_dim": 32, "num_blocks": 2, "head_dim": 8, **overrides})


_COMPILED: dict[str, object] = {}


def logits(config: LlamaConfig, params, idx, **inputs):
    """Jitted logits; array-valued `inputs` (pos_idx, segment_ids, document_borders) are traced."""
    key = repr((config, sorted(inputs)))
    if key not in _COMPILED:
        _COMPILED[key] = jax.jit(lambda p, i, kw: LlamaTransformer(config).apply({"params": p}, i, **kw))
    return np.asarray(_COMPILED[key](params, idx, inputs))


@functools.cache
def params_for(scan_blocks: bool = True):
    config = tiny(scan_blocks=scan_blocks)
    variables = jax.jit(LlamaTransformer(config).init)(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))
    return nn.meta.unbox(variables["params"])


def tokens(batch, seq, seed):
    return jax.random.randint(jax.random.PRNGKey(seed), (batch, seq), 0, 64)


@pytest.mark.parametrize("causal", [True, False])
def test_causality_by_perturbation(causal):
    config = tiny(causal=causal)
    idx = tokens(2, 16, seed=1)
    t = 9
    changed = idx.at[:, t].set((idx[:, t] + 1) % 64)
    before, after = logits(config, params_for(), idx), logits(config, params_for(), changed)
    earlier_change = np.abs(before[:, :t] - after[:, :t]).max()
    # Control: the perturbation does reach position t and later.
    assert np.abs(before[:, t:] - after[:, t:]).max() > DIFFERENT
    if causal:
        assert earlier_change <= SAME_ATOL
    else:
        assert earlier_change > DIFFERENT


def _packed_example():
    doc_a, doc_b = tokens(1, 7, seed=2), tokens(1, 9, seed=3)
    packed = jnp.concatenate([doc_a, doc_b], axis=1)
    segment_ids = jnp.asarray([[1] * 7 + [2] * 9])
    positions = jnp.asarray([list(range(7)) + list(range(9))])  # restart per document, as seqio packs
    borders = jnp.asarray([[True] + [False] * 6 + [True] + [False] * 8])
    return doc_a, doc_b, packed, segment_ids, positions, borders


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("inputs", ["segment_ids", "document_borders", "both"])
def test_document_isolation(causal, inputs):
    config = tiny(causal=causal, mask_across_document_boundaries=True)
    doc_a, doc_b, packed, segment_ids, positions, borders = _packed_example()
    given = {
        "segment_ids": {"segment_ids": segment_ids},
        "document_borders": {"document_borders": borders},
        "both": {"segment_ids": segment_ids, "document_borders": borders},
    }[inputs]
    out = logits(config, params_for(), packed, pos_idx=positions, **given)
    np.testing.assert_allclose(out[:, :7], logits(config, params_for(), doc_a), atol=SAME_ATOL, rtol=0)
    np.testing.assert_allclose(out[:, 7:], logits(config, params_for(), doc_b), atol=SAME_ATOL, rtol=0)


def test_without_document_masking_documents_see_each_other():
    # Control for the isolation test: the same packed row leaks across documents when the
    # config does not ask for masking, even though segment ids are passed.
    config = tiny(mask_across_document_boundaries=False)
    _, doc_b, packed, segment_ids, positions, _ = _packed_example()
    out = logits(config, params_for(), packed, pos_idx=positions, segment_ids=segment_ids)
    assert np.abs(out[:, 7:] - logits(config, params_for(), doc_b)).max() > DIFFERENT


def test_document_masking_without_segments_is_one_document():
    idx = tokens(2, 12, seed=4)
    masked = logits(tiny(mask_across_document_boundaries=True), params_for(), idx)
    np.testing.assert_allclose(masked, logits(tiny(), params_for(), idx), atol=SAME_ATOL, rtol=0)


def test_padding_segment_does_not_affect_documents():
    # seqio pads packed rows with segment id 0; real tokens must not attend to it (non-causal
    # so that padding after the document would otherwise be visible).
    config = tiny(causal=False, mask_across_document_boundaries=True)
    doc = tokens(1, 10, seed=5)
    padded = jnp.concatenate([doc, jnp.zeros((1, 6), jnp.int32)], axis=1)
    segment_ids = jnp.asarray([[1] * 10 + [0] * 6])
    out = logits(config, params_for(), padded, segment_ids=segment_ids)
    np.testing.assert_allclose(out[:, :10], logits(config, params_for(), doc), atol=SAME_ATOL, rtol=0)


def test_positions_enter_only_relatively():
    # Rotary attention depends on position differences: a common shift changes nothing, a
    # non-uniform one does (so pos_idx is really used).
    idx = tokens(2, 12, seed=6)
    base = jnp.broadcast_to(jnp.arange(12), (2, 12))
    out = logits(tiny(), params_for(), idx, pos_idx=base)
    np.testing.assert_allclose(
        out, logits(tiny(), params_for(), idx, pos_idx=base + 37), atol=SHIFT_ATOL, rtol=0
    )
    assert np.abs(out - logits(tiny(), params_for(), idx, pos_idx=base * 2)).max() > DIFFERENT
    np.testing.assert_allclose(out, logits(tiny(), params_for(), idx), atol=SAME_ATOL, rtol=0)


def test_scan_equals_unrolled_through_the_conversion():
    idx = tokens(2, 12, seed=7)
    scanned = params_for(scan_blocks=True)
    unrolled = scanned_to_unrolled_params(scanned)
    assert set(unrolled["block_stack"]) == {"block_0", "block_1"}
    expected = logits(tiny(scan_blocks=True), scanned, idx)
    np.testing.assert_allclose(
        logits(tiny(scan_blocks=False), unrolled, idx), expected, atol=SAME_ATOL, rtol=0
    )
    # And back: the round trip is exact.
    back = unrolled_to_scanned_params(unrolled)
    jax.tree.map(np.testing.assert_array_equal, back, scanned)
    # Control: changing only the second block's parameters is noticed.
    bumped = jax.tree.map(lambda x: x, unrolled)
    bumped["block_stack"]["block_1"]["ffn"]["norm"]["scale"] = jnp.full((32,), 2.0)
    assert np.abs(logits(tiny(scan_blocks=False), bumped, idx) - expected).max() > DIFFERENT


def test_unrolled_init_converts_to_a_working_scanned_model():
    idx = tokens(1, 8, seed=8)
    unrolled = params_for(scan_blocks=False)
    scanned = unrolled_to_scanned_params(unrolled)
    assert scanned["block_stack"]["blocks"]["attention"]["query"]["kernel"].shape == (2, 32, 4, 8)
    np.testing.assert_allclose(
        logits(tiny(), scanned, idx), logits(tiny(scan_blocks=False), unrolled, idx), atol=SAME_ATOL, rtol=0
    )


def test_conversion_keeps_logical_axis_names():
    config = tiny()
    boxed = jax.eval_shape(LlamaTransformer(config).init, jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))
    boxed = boxed["params"]
    unrolled = jax.eval_shape(scanned_to_unrolled_params, boxed)
    kernel = unrolled["block_stack"]["block_1"]["attention"]["query"]["kernel"]
    assert kernel.names == ("embed", "heads", "head_dim")
    assert kernel.value.shape == (32, 4, 8)
    rescanned = jax.eval_shape(unrolled_to_scanned_params, unrolled)
    assert rescanned["block_stack"]["blocks"]["attention"]["query"]["kernel"].names == (
        "layers",
        "embed",
        "heads",
        "head_dim",
    )


def test_converting_the_wrong_layout_says_so():
    with pytest.raises(ValueError, match="look unrolled already"):
        scanned_to_unrolled_params(params_for(scan_blocks=False))
    with pytest.raises(ValueError, match="look scanned already"):
        unrolled_to_scanned_params(params_for(scan_blocks=True))


def test_bad_inputs_are_refused_clearly():
    params = params_for()
    model = LlamaTransformer(tiny())
    with pytest.raises(ValueError, match=r"idx must be \[batch, seq_len\]"):
        model.apply({"params": params}, jnp.zeros((4,), jnp.int32))
    with pytest.raises(ValueError, match="pos_idx must have the shape of idx"):
        model.apply({"params": params}, jnp.zeros((2, 4), jnp.int32), pos_idx=jnp.zeros((2, 5), jnp.int32))
    with pytest.raises(ValueError, match="integer token ids"):
        model.apply({"params": params}, jnp.zeros((2, 4), jnp.float32))


def test_dataclass_replace_keeps_validation():
    with pytest.raises(ValueError, match="not divisible"):
        dataclasses.replace(tiny(), head_dim=12)


# Every logical axis name the model uses; the rules table in llama_fdl.sharding must cover them.
LOGICAL_PARAM_AXES = {"embed", "heads", "kv_heads", "head_dim", "mlp", "vocab", "norm", "layers"}


def test_params_use_only_the_documented_logical_axes():
    boxed = jax.eval_shape(
        LlamaTransformer(tiny(use_bias=True, qk_norm=True)).init,
        jax.random.PRNGKey(0),
        jnp.zeros((1, 4), jnp.int32),
    )
    leaves = jax.tree.leaves(boxed["params"], is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert all(isinstance(leaf, nn.Partitioned) for leaf in leaves)
    assert all(len(leaf.names) == leaf.value.ndim for leaf in leaves)
    assert set().union(*(leaf.names for leaf in leaves)) == LOGICAL_PARAM_AXES


def test_init_and_apply_under_a_mesh_with_partitioning_rules():
    # Under rules, every boxed param and activation constraint is checked against its rank, which
    # catches names that do not match the array (flax's DenseGeneral trips on this).
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
    rules = (
        ("batch", ("data", "fsdp")),
        ("length", None),
        ("vocab", "tensor"),
        ("heads", "tensor"),
        ("kv_heads", "tensor"),
        ("mlp", "tensor"),
        ("embed", "fsdp"),
        ("head_dim", None),
        ("norm", None),
        ("layers", None),
    )
    config = tiny(use_bias=True, qk_norm=True, mask_across_document_boundaries=True, num_kv_heads=2)
    idx = tokens(2, 8, seed=9)
    segment_ids = jnp.asarray([[1] * 3 + [2] * 5] * 2)
    model = LlamaTransformer(config)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        variables = jax.jit(model.init)(jax.random.PRNGKey(0), idx)
        params = nn.meta.unbox(variables["params"])
        out = jax.jit(lambda p: model.apply({"params": p}, idx, segment_ids=segment_ids))(params)
        # The decode path's constraints (the KV cache) too: prefill the same tokens into a cache.
        cache = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), idx, decode=True))["cache"]
        cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), cache)
        decoded, _ = jax.jit(
            lambda p, c: model.apply(
                {"params": p, "cache": c}, idx, segment_ids=segment_ids, decode=True, mutable=["cache"]
            )
        )(params, cache)
    expected = model.apply({"params": params}, idx, segment_ids=segment_ids)
    np.testing.assert_allclose(out, expected, atol=SAME_ATOL, rtol=0)
    np.testing.assert_allclose(decoded, expected, atol=SAME_ATOL, rtol=0)
