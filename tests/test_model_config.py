"""LlamaConfig validation, derived sizes, and num_params against the real parameter count."""

import dataclasses

import jax
import jax.numpy as jnp
import pytest
from flax import linen as nn

from llama_fdl.model import (
    LlamaConfig,
    LlamaTransformer,
    ParallelConfig,
    RopeScaling,
    architecture_difference,
    num_matmul_params,
    num_params,
)


def tiny(**overrides) -> LlamaConfig:
    return LlamaConfig(**{"vocab_size": 64, "embedding_dim": 32, "num_blocks": 2, "head_dim": 8, **overrides})


def abstract_params(config: LlamaConfig):
    """Parameter shapes without allocating or computing anything."""
    idx = jnp.zeros((1, 4), jnp.int32)
    variables = jax.eval_shape(lambda: LlamaTransformer(config).init(jax.random.PRNGKey(0), idx))
    return nn.meta.unbox(variables["params"])


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"use_bias": True},
        {"qk_norm": True},
        {"use_bias": True, "qk_norm": True, "scan_blocks": False},
        {"ffn_dim_multiplier": 1.7, "ffn_multiple_of": 16, "num_blocks": 3},
        {"vocab_size": 100, "embedding_dim": 48, "head_dim": 16},
        {"num_kv_heads": 2},
        {"num_kv_heads": 1, "qkv_bias": True, "tie_embeddings": True},
        {"num_kv_heads": 2, "use_bias": True, "qk_norm": True},
    ],
)
def test_num_params_equals_the_real_count(overrides):
    config = tiny(**overrides)
    leaves = jax.tree.leaves(abstract_params(config))
    assert num_params(config) == sum(leaf.size for leaf in leaves)


def test_num_params_notices_a_missing_term():
    # Control: the count is sensitive to use_bias and qk_norm, so a formula that forgot
    # either would fail the equality above.
    base = num_params(tiny())
    assert num_params(tiny(use_bias=True)) > base
    assert num_params(tiny(qk_norm=True)) == base + 2 * 2 * 8


@pytest.mark.parametrize("overrides", [{}, {"num_kv_heads": 2}], ids=["mha", "gqa"])
def test_num_matmul_params_counts_every_kernel_but_the_embedding(overrides):
    config = tiny(use_bias=True, qk_norm=True, **overrides)
    params = abstract_params(config)
    kernels = [
        leaf.size for path, leaf in jax.tree_util.tree_leaves_with_path(params) if path[-1].key == "kernel"
    ]
    assert num_matmul_params(config) == sum(kernels)


def test_a_tied_head_counts_once_and_grouped_heads_shrink_k_and_v():
    # 4 heads of 8 on d=32: k and v each lose (4 - 1) * 8 * 32 weights per block with one kv head.
    base = tiny()
    assert num_params(tiny(num_kv_heads=1)) == num_params(base) - 2 * 2 * 3 * 8 * 32
    assert num_params(tiny(tie_embeddings=True)) == num_params(base) - 64 * 32
    assert num_matmul_params(tiny(tie_embeddings=True)) == num_matmul_params(base)
    assert "lm_head" not in abstract_params(tiny(tie_embeddings=True))


def test_heads_are_embedding_dim_over_head_dim():
    for head_dim, heads in ((8, 4), (16, 2), (32, 1)):
        config = tiny(head_dim=head_dim)
        assert config.num_heads == heads
        query = abstract_params(config)["block_stack"]["blocks"]["attention"]["query"]["kernel"]
        assert query.shape == (2, 32, heads, head_dim)


def test_head_dim_that_does_not_divide_is_refused_with_suggestions():
    with pytest.raises(ValueError, match=r"embedding_dim=32 is not divisible by head_dim=12.*for example"):
        tiny(head_dim=12)


def test_odd_head_dim_is_refused():
    with pytest.raises(ValueError, match="head_dim=1 must be even"):
        tiny(head_dim=1)


@pytest.mark.parametrize(
    "d, multiple_of, multiplier, hidden",
    [
        (4096, 256, 1.0, 11008),  # Llama 2 7B
        (4096, 1024, 1.3, 14336),  # Llama 3 8B
        (32, 64, 1.0, 128),  # 8/3 * 32 = 85.3 -> 128
        (48, 16, 1.0, 128),  # 8/3 * 48 = 128 exactly
        (48, 16, 2.0, 256),
    ],
)
def test_ffn_hidden_width_formula(d, multiple_of, multiplier, hidden):
    config = LlamaConfig(
        vocab_size=8,
        embedding_dim=d,
        num_blocks=1,
        head_dim=16,
        ffn_multiple_of=multiple_of,
        ffn_dim_multiplier=multiplier,
    )
    assert config.ffn_hidden_dim == hidden


def test_ffn_width_reaches_the_parameters():
    config = tiny(ffn_dim_multiplier=2.0, ffn_multiple_of=8)
    ffn = abstract_params(config)["block_stack"]["blocks"]["ffn"]
    assert config.ffn_hidden_dim == 176  # 8/3 * 32 * 2 = 170.7 -> 176
    assert ffn["gate"]["kernel"].shape == (2, 32, 176)
    assert ffn["up"]["kernel"].shape == (2, 32, 176)
    assert ffn["down"]["kernel"].shape == (2, 176, 32)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"dtype": "float64"}, "dtype='float64' is not one of"),
        ({"attention_backend": "flash"}, "attention_backend='flash' is not one of"),
        ({"dropout_rate": 1.0}, r"dropout_rate=1.0 must be in \[0, 1\)"),
        ({"logits_soft_cap": 0.0}, "logits_soft_cap=0.0 must be > 0 or None"),
        ({"theta": -1.0}, "theta=-1.0 must be > 0"),
        ({"num_blocks": 0}, "num_blocks=0 must be a positive integer"),
        ({"num_kv_heads": 3}, "num_kv_heads=3 does not divide the 4 query heads .*use one of 1, 2, 4"),
        ({"num_kv_heads": 0}, "num_kv_heads=0 does not divide"),
        ({"norm_eps": 0.0}, "norm_eps=0.0 must be > 0"),
        ({"tie_embeddings": True, "use_bias": True}, "tie_embeddings=True leaves the LM head without"),
    ],
)
def test_bad_values_are_refused_with_one_sentence(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny(**overrides)


def test_bad_remat_is_refused():
    with pytest.raises(ValueError, match="remat='some' is not one of"):
        ParallelConfig(remat="some")


def test_bad_rope_scaling_is_refused():
    with pytest.raises(ValueError, match="low_freq_factor < high_freq_factor"):
        RopeScaling(low_freq_factor=4.0, high_freq_factor=1.0)


def test_the_new_fields_default_to_the_seed_model():
    # A config written before num_kv_heads, norm_eps, rope_scaling, qkv_bias and tie_embeddings
    # existed builds the same parameters and the same function.
    config = tiny()
    assert (config.kv_heads, config.norm_eps, config.rope_scaling) == (config.num_heads, 1e-6, None)
    assert not (config.qkv_bias or config.tie_embeddings)


def test_architecture_difference_compares_what_the_weights_mean():
    # Two spellings of one feed-forward width, and None vs 4 key/value heads, are the same model;
    # layout and dtype are not architecture.
    a = tiny(ffn_multiple_of=64, ffn_dim_multiplier=1.0, num_kv_heads=None)
    b = tiny(ffn_multiple_of=128, ffn_dim_multiplier=1.0, num_kv_heads=4, scan_blocks=False, dtype="bfloat16")
    assert a.ffn_hidden_dim == b.ffn_hidden_dim == 128
    assert architecture_difference(a, b) is None
    # Controls: a different width, key/value head count or epsilon is named.
    assert architecture_difference(a, tiny(ffn_dim_multiplier=2.0))[:2] == (
        "ffn_multiple_of",
        "ffn_hidden_dim",
    )
    assert architecture_difference(a, tiny(num_kv_heads=2)) == ("num_kv_heads", "kv_heads", 4, 2)
    assert architecture_difference(a, tiny(norm_eps=1e-5)) == ("norm_eps", "norm_eps", 1e-6, 1e-5)


def test_to_dict_round_trips():
    config = tiny(parallel=ParallelConfig(remat="full"), logits_soft_cap=30.0)
    as_dict = config.to_dict()
    assert as_dict["parallel"]["remat"] == "full"
    rebuilt = LlamaConfig(**{**as_dict, "parallel": ParallelConfig(**as_dict["parallel"])})
    assert rebuilt == config
    assert dataclasses.replace(config, dtype="bfloat16")._dtype == jnp.bfloat16
