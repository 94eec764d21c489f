"""Weights to and from HF `transformers` LlamaForCausalLM give the same logits.

HF runs in float32 with eager attention; every weight, norm scales included, is random so a
misplaced tensor cannot hide behind an initial value of zero or one.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import linen as nn

from llama_fdl.model import LlamaConfig, LlamaTransformer, scanned_to_unrolled_params
from llama_fdl.model.hf import export_hf, hf_config_from_llama, import_hf, llama_config_from_hf

# Fixed in advance: HF against us on the same weights; our model against itself after export
# and reload (the weights are copied exactly, so only recompilation may differ).
HF_ATOL = 1e-4
RELOAD_ATOL = 1e-5
DIFFERENT = 1e-3


def hf_model(seed=0, **overrides):
    kwargs = {
        "vocab_size": 128,
        "hidden_size": 64,
        "intermediate_size": 192,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
    }
    kwargs.update(overrides)
    config = transformers.LlamaConfig(**kwargs)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, weight in model.named_parameters():
            weight.copy_(0.2 * torch.randn_like(weight) + (1.0 if "norm" in name else 0.0))
    return model


def hf_logits(model, idx, position_ids=None):
    with torch.no_grad():
        kwargs = {} if position_ids is None else {"position_ids": torch.from_numpy(np.asarray(position_ids))}
        return model(torch.from_numpy(np.asarray(idx)), **kwargs).logits.numpy()


def our_logits(config, params, idx, pos_idx=None):
    return np.asarray(
        jax.jit(lambda p, i, pos: LlamaTransformer(config).apply({"params": p}, i, pos_idx=pos))(
            params, jnp.asarray(idx), pos_idx
        )
    )


def tokens(vocab=128, batch=2, seq=10, seed=3):
    return np.random.RandomState(seed).randint(0, vocab, (batch, seq))


SHAPES = {
    "4_heads_of_16": {},
    "theta_5e5_bias_3_blocks": {
        "hidden_size": 96,
        "num_attention_heads": 2,
        "intermediate_size": 200,  # not a multiple of 64: exercises the general ffn sizing
        "num_hidden_layers": 3,
        "rope_parameters": {"rope_type": "default", "rope_theta": 5e5},
        "attention_bias": True,
        "mlp_bias": True,
    },
    "explicit_head_dim_24_tied": {
        "hidden_size": 48,
        "num_attention_heads": 2,
        "head_dim": 24,
        "intermediate_size": 128,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1234.5},
        "tie_word_embeddings": True,
    },
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_imported_weights_give_hf_logits(shape):
    model = hf_model(**SHAPES[shape])
    config, params = import_hf(model)
    hf = model.config
    assert (config.embedding_dim, config.num_heads, config.head_dim) == (
        hf.hidden_size,
        hf.num_attention_heads,
        hf.head_dim,
    )
    assert config.ffn_hidden_dim == hf.intermediate_size
    assert config.theta == hf.rope_parameters["rope_theta"]
    idx = tokens()
    np.testing.assert_allclose(our_logits(config, params, idx), hf_logits(model, idx), atol=HF_ATOL, rtol=0)


def test_positions_match_hf_position_ids():
    model = hf_model()
    config, params = import_hf(model)
    idx = tokens(seq=12)
    positions = np.stack([np.arange(12) + 5, np.concatenate([np.arange(4), np.arange(8)])]).astype(np.int32)
    np.testing.assert_allclose(
        our_logits(config, params, idx, jnp.asarray(positions)),
        hf_logits(model, idx, positions),
        atol=HF_ATOL,
        rtol=0,
    )


def test_parity_check_notices_a_changed_weight():
    # Control: one norm scale or a rotary convention change is visible at this tolerance.
    model = hf_model()
    config, params = import_hf(model)
    idx = tokens()
    with torch.no_grad():
        model.model.layers[1].input_layernorm.weight[:8] *= 2.0
    assert np.abs(our_logits(config, params, idx) - hf_logits(model, idx)).max() > DIFFERENT
    model = hf_model()
    config, params = import_hf(model)
    attention = params["block_stack"]["blocks"]["attention"]
    # The interleaved rotary convention pairs channel 2i with 2i+1: permuting the query and key
    # channels to it (each kernel its own, so q.k is unchanged and only rotary can tell) is
    # exactly the mistake this interop must not make.
    interleave = np.concatenate([np.arange(0, 16, 2), np.arange(1, 16, 2)])
    for name in ("query", "key"):
        attention[name]["kernel"] = attention[name]["kernel"][..., interleave]
    assert np.abs(our_logits(config, params, idx) - hf_logits(model, idx)).max() > DIFFERENT


def test_import_from_a_saved_directory_in_either_layout(tmp_path):
    model = hf_model(seed=1)
    model.save_pretrained(tmp_path)
    idx = tokens()
    expected = hf_logits(model, idx)
    config, params = import_hf(str(tmp_path))
    np.testing.assert_allclose(our_logits(config, params, idx), expected, atol=HF_ATOL, rtol=0)
    unrolled_config, unrolled = import_hf(tmp_path, scan_blocks=False)
    assert "block_1" in unrolled["block_stack"]
    np.testing.assert_allclose(our_logits(unrolled_config, unrolled, idx), expected, atol=HF_ATOL, rtol=0)


@pytest.mark.parametrize(
    "config",
    [
        LlamaConfig(vocab_size=96, embedding_dim=64, num_blocks=2, head_dim=32, theta=2e4),
        LlamaConfig(
            vocab_size=96, embedding_dim=48, num_blocks=2, head_dim=16, use_bias=True, scan_blocks=False
        ),
    ],
    ids=["head_dim_32", "bias_unrolled"],
)
def test_export_loads_in_hf_and_round_trips(config, tmp_path):
    idx = tokens(vocab=96)
    params = jax.jit(LlamaTransformer(config).init)(jax.random.PRNGKey(0), jnp.asarray(idx))["params"]
    params = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.PRNGKey(1), x.shape), params)
    params = jax.tree.map(np.asarray, jax.device_get(nn.meta.unbox(params)))
    if config.use_bias:  # HF's head has no bias; a zero one exports
        params["lm_head"]["bias"] = np.zeros_like(params["lm_head"]["bias"])
    ours = our_logits(config, params, idx)

    export_hf(params, config, str(tmp_path))
    reloaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    np.testing.assert_allclose(hf_logits(reloaded, idx), ours, atol=HF_ATOL, rtol=0)

    config_back, params_back = import_hf(str(tmp_path), scan_blocks=config.scan_blocks)
    assert config_back.ffn_hidden_dim == config.ffn_hidden_dim
    assert (config_back.head_dim, config_back.theta, config_back.use_bias) == (
        config.head_dim,
        config.theta,
        config.use_bias,
    )
    jax.tree.map(np.testing.assert_array_equal, params_back, params)
    np.testing.assert_allclose(our_logits(config_back, params_back, idx), ours, atol=RELOAD_ATOL, rtol=0)


def test_export_of_scanned_params_equals_export_of_unrolled():
    config = LlamaConfig(vocab_size=32, embedding_dim=32, num_blocks=2, head_dim=16)
    params = nn.meta.unbox(
        jax.jit(LlamaTransformer(config).init)(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"]
    )
    unrolled_config = LlamaConfig(
        vocab_size=32, embedding_dim=32, num_blocks=2, head_dim=16, scan_blocks=False
    )
    a = export_hf(params, config).state_dict()
    b = export_hf(scanned_to_unrolled_params(params), unrolled_config).state_dict()
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=0, rtol=0)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"head_dim": 8}, r"heads \* head_dim = 4 \* 8 != hidden_size 64"),
        ({"attention_bias": True}, "attention_bias and mlp_bias differ"),
        ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
        (
            {"rope_parameters": {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}},
            "rope_type='linear'",
        ),
    ],
)
def test_unrepresentable_hf_models_are_refused(overrides, message):
    config = hf_model(**overrides).config
    with pytest.raises(ValueError, match=message):
        llama_config_from_hf(config)


def test_architecture_fields_cannot_be_overridden_on_import():
    with pytest.raises(ValueError, match=r"\['head_dim'\] come from the HF checkpoint"):
        llama_config_from_hf(hf_model().config, head_dim=8)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"qk_norm": True}, "qk_norm"),
        ({"causal": False}, "causal=False"),
        ({"logits_soft_cap": 30.0}, "soft cap"),
    ],
)
def test_unexportable_configs_are_refused(overrides, message):
    config = LlamaConfig(vocab_size=32, embedding_dim=32, num_blocks=1, head_dim=16, **overrides)
    with pytest.raises(ValueError, match=message):
        hf_config_from_llama(config)


def test_nonzero_head_bias_is_refused():
    config = LlamaConfig(vocab_size=32, embedding_dim=32, num_blocks=1, head_dim=16, use_bias=True)
    params = jax.jit(LlamaTransformer(config).init)(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))[
        "params"
    ]
    params = nn.meta.unbox(params)
    params["lm_head"]["bias"] = jnp.ones((32,))
    with pytest.raises(ValueError, match="LM head has no bias"):
        export_hf(params, config)
