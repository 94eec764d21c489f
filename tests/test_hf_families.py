"""Llama 3, Mistral and Qwen2 checkpoints in and out: grouped-query attention, norm epsilon,
tied embeddings, q/k/v biases and Llama 3's rope scaling give HF's logits.

Each shape is built as a small random HF model (no downloads), imported, compared with HF in
float32 (eager attention), exported, reloaded by transformers and compared again.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from llama_fdl.model import LlamaTransformer
from llama_fdl.model.hf import export_hf, import_hf, llama_config_from_hf

# Fixed in advance (as in test_hf_interop): HF against us on the same weights, and the least a
# control must differ by.
HF_ATOL = 1e-4
DIFFERENT = 1e-3
SEQ = 40  # long enough that Llama 3 scaling's interpolated band matters (see ROPE_LLAMA3)

# original_max_position_embeddings 32 with head_dim 16 and theta 1e4 puts one frequency in each
# of the three bands (kept, interpolated, divided by factor).
ROPE_LLAMA3 = {
    "rope_type": "llama3",
    "rope_theta": 10000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32,
}
COMMON = {
    "vocab_size": 96,
    "hidden_size": 64,
    "intermediate_size": 160,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "head_dim": 16,
}
FAMILIES = {
    # Llama 3.2-shaped: GQA, eps 1e-5, llama3 rope scaling, tied embeddings.
    "llama3": (
        transformers.LlamaConfig,
        {
            "num_key_value_heads": 2,
            "rms_norm_eps": 1e-5,
            "rope_parameters": ROPE_LLAMA3,
            "tie_word_embeddings": True,
        },
    ),
    # Mistral-shaped: one key/value head, eps 1e-5, theta 1e6, no sliding window, untied.
    "mistral": (
        transformers.MistralConfig,
        {
            "num_key_value_heads": 1,
            "rms_norm_eps": 1e-5,
            "sliding_window": None,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6},
            "tie_word_embeddings": False,
        },
    ),
    # Qwen2-shaped: q/k/v biases only, GQA, eps 1e-6, tied.
    "qwen2": (
        transformers.Qwen2Config,
        {
            "num_key_value_heads": 2,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6},
            "tie_word_embeddings": True,
        },
    ),
}


@pytest.fixture(autouse=True)
def highest_precision():
    """float32 matmuls in full precision on GPUs too (TF32 would exceed HF_ATOL)."""
    with jax.default_matmul_precision("highest"):
        yield


def hf_model(family: str, seed: int = 0, **overrides):
    config_cls, kwargs = FAMILIES[family]
    config = config_cls(**{**COMMON, **kwargs, **overrides})
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, weight in model.named_parameters():
            weight.copy_(0.2 * torch.randn_like(weight) + (1.0 if "norm" in name else 0.0))
    return model


def hf_logits(model, idx):
    with torch.no_grad():
        return model(torch.from_numpy(np.asarray(idx))).logits.numpy()


def our_logits(config, params, idx):
    fn = jax.jit(lambda p, i: LlamaTransformer(config).apply({"params": p}, i))
    return np.asarray(fn(params, jnp.asarray(idx)))


def tokens(seed=3):
    return np.random.RandomState(seed).randint(0, 96, (2, SEQ))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_import_gives_hf_logits_and_export_reloads_in_transformers(family, tmp_path):
    model = hf_model(family)
    config, params = import_hf(model)
    hf = model.config
    assert config.kv_heads == hf.num_key_value_heads and config.norm_eps == hf.rms_norm_eps
    assert config.tie_embeddings == hf.tie_word_embeddings
    assert config.qkv_bias == (family == "qwen2")
    assert (config.rope_scaling is not None) == (family == "llama3")
    idx = tokens()
    expected = hf_logits(model, idx)
    ours = our_logits(config, params, idx)
    np.testing.assert_allclose(ours, expected, atol=HF_ATOL, rtol=0)

    export_hf(params, config, str(tmp_path))
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert type(reloaded).__name__ == ("Qwen2ForCausalLM" if family == "qwen2" else "LlamaForCausalLM")
    np.testing.assert_allclose(hf_logits(reloaded, idx), ours, atol=HF_ATOL, rtol=0)
    config_back, params_back = import_hf(str(tmp_path))
    assert config_back == config
    jax.tree.map(np.testing.assert_array_equal, params_back, params)


def test_llama3_export_loads_as_llama_for_causal_lm(tmp_path):
    config, params = import_hf(hf_model("llama3"))
    export_hf(params, config, str(tmp_path))
    reloaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert reloaded.config.rope_parameters["rope_type"] == "llama3"
    idx = tokens()
    np.testing.assert_allclose(
        hf_logits(reloaded, idx), our_logits(config, params, idx), atol=HF_ATOL, rtol=0
    )


def test_the_comparison_notices_missing_rope_scaling_and_a_wrong_epsilon():
    # Control for rope scaling: the same weights without it.
    model = hf_model("llama3")
    config, params = import_hf(model)
    idx = tokens()
    expected = hf_logits(model, idx)
    unscaled = dataclasses.replace(config, rope_scaling=None)
    assert np.abs(our_logits(unscaled, params, idx) - expected).max() > DIFFERENT
    # Control for the epsilon: with a tiny embedding the mean square is comparable to eps, so
    # 1e-6 instead of 1e-5 shows; the right epsilon still matches.
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(1e-3)
    config, params = import_hf(model)
    expected = hf_logits(model, idx)
    np.testing.assert_allclose(our_logits(config, params, idx), expected, atol=HF_ATOL, rtol=0)
    wrong_eps = dataclasses.replace(config, norm_eps=1e-6)
    assert np.abs(our_logits(wrong_eps, params, idx) - expected).max() > DIFFERENT


def test_the_comparison_notices_a_wrong_grouping_of_query_heads():
    # Control: permuting query heads together with their rows of the output projection changes
    # nothing under plain multi-head attention, but pairs query heads with other key/value heads
    # under GQA, as an interleaved (n % K instead of n // G) grouping would.
    model = hf_model("llama3")
    config, params = import_hf(model)
    idx = tokens()
    attention = params["block_stack"]["blocks"]["attention"]
    order = [0, 2, 1, 3]
    attention["query"]["kernel"] = np.asarray(attention["query"]["kernel"])[:, :, order]
    attention["out"]["kernel"] = np.asarray(attention["out"]["kernel"])[:, order]
    assert np.abs(our_logits(config, params, idx) - hf_logits(model, idx)).max() > DIFFERENT


def test_an_unmapped_architecture_is_refused_in_one_line(tmp_path):
    gpt2 = transformers.GPT2Config(
        n_layer=1, n_embd=32, n_head=2, vocab_size=64, architectures=["GPT2LMHeadModel"]
    )
    gpt2.save_pretrained(tmp_path)
    with pytest.raises(
        ValueError, match=r"holds a GPT2LMHeadModel \(model_type 'gpt2'\), which llama_fdl does not map"
    ):
        import_hf(str(tmp_path))
    with pytest.raises(ValueError, match="The HF checkpoint is a GPT2LMHeadModel"):
        llama_config_from_hf(gpt2)
    with pytest.raises(ValueError, match="no config.json"):
        import_hf(str(tmp_path / "nothing_here"))


def test_a_sliding_window_is_refused():
    config = hf_model("mistral", sliding_window=16).config
    with pytest.raises(ValueError, match="sliding_window=16"):
        llama_config_from_hf(config)
