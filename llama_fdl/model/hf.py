"""Weights in and out of HF `transformers` `LlamaForCausalLM`.

Both models use the same rotary convention (rotate halves), the same RMSNorm epsilon
(`RMS_NORM_EPS` = 1e-6, HF's default `rms_norm_eps`) and the same SwiGLU, so conversion is
transposes and reshapes only. torch and transformers are imported inside the functions that need
them, so `import llama_fdl.model` stays free of torch.

What has no counterpart on the other side is refused with a ValueError, never dropped: on import,
grouped-query attention, non-default rope scaling, heads * head_dim != hidden_size, a different
activation or epsilon, biases on only attention or only MLP; on export, qk_norm, causal=False,
logits_soft_cap, and a non-zero LM-head bias (HF's Llama head has none).

Shape legend: D embedding_dim, N heads, H head_dim, F ffn_hidden_dim, V vocab_size.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import linen as nn

from llama_fdl.model.config import LlamaConfig
from llama_fdl.model.norm import RMS_NORM_EPS
from llama_fdl.model.stack import scanned_to_unrolled_params, unrolled_to_scanned_params

# LlamaConfig fields that the HF checkpoint determines; overriding one would mismatch the weights.
_ARCHITECTURE_FIELDS = (
    "vocab_size", "embedding_dim", "num_blocks", "head_dim", "qk_norm", "causal", "theta",
    "ffn_multiple_of", "ffn_dim_multiplier", "use_bias", "logits_soft_cap",
)  # fmt: skip

# (HF name inside layer i, our path inside block_i, how the array is laid out on each side).
_BLOCK_WEIGHTS = (
    ("input_layernorm.weight", ("attention", "norm", "scale"), "same"),
    ("self_attn.q_proj.weight", ("attention", "query", "kernel"), "to_heads"),
    ("self_attn.k_proj.weight", ("attention", "key", "kernel"), "to_heads"),
    ("self_attn.v_proj.weight", ("attention", "value", "kernel"), "to_heads"),
    ("self_attn.o_proj.weight", ("attention", "out", "kernel"), "from_heads"),
    ("post_attention_layernorm.weight", ("ffn", "norm", "scale"), "same"),
    ("mlp.gate_proj.weight", ("ffn", "gate", "kernel"), "linear"),
    ("mlp.up_proj.weight", ("ffn", "up", "kernel"), "linear"),
    ("mlp.down_proj.weight", ("ffn", "down", "kernel"), "linear"),
)
_BLOCK_BIASES = (
    ("self_attn.q_proj.bias", ("attention", "query", "bias"), "head_bias"),
    ("self_attn.k_proj.bias", ("attention", "key", "bias"), "head_bias"),
    ("self_attn.v_proj.bias", ("attention", "value", "bias"), "head_bias"),
    ("self_attn.o_proj.bias", ("attention", "out", "bias"), "same"),
    ("mlp.gate_proj.bias", ("ffn", "gate", "bias"), "same"),
    ("mlp.up_proj.bias", ("ffn", "up", "bias"), "same"),
    ("mlp.down_proj.bias", ("ffn", "down", "bias"), "same"),
)


def llama_config_from_hf(
    hf_config: Any, *, allow_rms_norm_eps_mismatch: bool = False, **overrides: Any
) -> LlamaConfig:
    """The LlamaConfig of an HF `transformers.LlamaConfig`; `overrides` set non-architecture fields.

    Our RMSNorm epsilon is fixed at 1e-6; a checkpoint trained with another (Llama 2 and 3 use
    1e-5) is refused unless `allow_rms_norm_eps_mismatch=True` accepts the small difference.
    """
    fixed = sorted(set(overrides) & set(_ARCHITECTURE_FIELDS))
    if fixed:
        raise ValueError(f"{fixed} come from the HF checkpoint and cannot be overridden.")
    heads, kv_heads = hf_config.num_attention_heads, hf_config.num_key_value_heads
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads
    d = hf_config.hidden_size
    problems = []
    if kv_heads != heads:
        problems.append(f"grouped-query attention ({kv_heads} kv heads for {heads} heads)")
    if heads * head_dim != d:
        problems.append(f"heads * head_dim = {heads} * {head_dim} != hidden_size {d}")
    if hf_config.hidden_act != "silu":
        problems.append(f"hidden_act={hf_config.hidden_act!r} (only silu)")
    if hf_config.attention_bias != getattr(hf_config, "mlp_bias", False):
        problems.append("attention_bias and mlp_bias differ (use_bias covers both)")
    if hf_config.rms_norm_eps != RMS_NORM_EPS and not allow_rms_norm_eps_mismatch:
        problems.append(
            f"rms_norm_eps={hf_config.rms_norm_eps} (ours is {RMS_NORM_EPS}; pass "
            "allow_rms_norm_eps_mismatch=True to accept the difference)"
        )
    rope = _rope_parameters(hf_config)
    if rope.get("rope_type", "default") != "default":
        problems.append(f"rope_type={rope['rope_type']!r} (only default rope)")
    if problems:
        raise ValueError("This HF Llama cannot be represented: " + "; ".join(problems) + ".")
    multiple_of, multiplier = _ffn_sizing(d, hf_config.intermediate_size)
    return LlamaConfig(
        vocab_size=hf_config.vocab_size,
        embedding_dim=d,
        num_blocks=hf_config.num_hidden_layers,
        head_dim=head_dim,
        theta=float(rope["rope_theta"]),
        ffn_multiple_of=multiple_of,
        ffn_dim_multiplier=multiplier,
        use_bias=bool(hf_config.attention_bias),
        **overrides,
    )


def hf_config_from_llama(config: LlamaConfig) -> Any:
    """The `transformers.LlamaConfig` of a LlamaConfig, refusing what HF Llama cannot express."""
    import transformers

    problems = []
    if config.qk_norm:
        problems.append("qk_norm=True (HF Llama has no q/k norm)")
    if not config.causal:
        problems.append("causal=False (HF Llama is causal)")
    if config.logits_soft_cap is not None:
        problems.append(f"logits_soft_cap={config.logits_soft_cap} (HF Llama has no soft cap)")
    if problems:
        raise ValueError("This model cannot be exported to HF Llama: " + "; ".join(problems) + ".")
    return transformers.LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.embedding_dim,
        intermediate_size=config.ffn_hidden_dim,
        num_hidden_layers=config.num_blocks,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,
        head_dim=config.head_dim,
        hidden_act="silu",
        rms_norm_eps=RMS_NORM_EPS,
        rope_parameters={"rope_type": "default", "rope_theta": float(config.theta)},
        attention_bias=config.use_bias,
        mlp_bias=config.use_bias,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
    )


def params_from_hf(state_dict: Mapping[str, Any], config: LlamaConfig) -> dict[str, Any]:
    """Our params (layout per `config.scan_blocks`) from an HF LlamaForCausalLM state dict."""
    weights = {name: _to_numpy(value) for name, value in state_dict.items()}
    used = set()

    def take(name: str) -> np.ndarray:
        if name not in weights:
            raise ValueError(f"The HF state dict has no {name!r}; is it a LlamaForCausalLM?")
        used.add(name)
        return weights[name]

    # Tied checkpoints may store the head only as the embedding; ours is always untied.
    head_name = "lm_head.weight" if "lm_head.weight" in weights else "model.embed_tokens.weight"
    params: dict[str, Any] = {
        "embed": {"embedding": take("model.embed_tokens.weight")},
        "final_norm": {"scale": take("model.norm.weight")},
        "lm_head": {"kernel": take(head_name).T},
        "block_stack": {},
    }
    if config.use_bias:
        params["lm_head"]["bias"] = np.zeros((config.vocab_size,), np.float32)
    for i in range(config.num_blocks):
        block: dict[str, Any] = {}
        for hf_name, path, layout in _block_entries(config):
            _set(block, path, _hf_to_ours(take(f"model.layers.{i}.{hf_name}"), layout, config))
        params["block_stack"][f"block_{i}"] = block
    unused = sorted(set(weights) - used)
    if unused:
        raise ValueError(f"The HF state dict has weights this model has no place for: {unused[:5]}.")
    return unrolled_to_scanned_params(params) if config.scan_blocks else params


def state_dict_from_params(params: Mapping[str, Any], config: LlamaConfig) -> dict[str, np.ndarray]:
    """HF LlamaForCausalLM state dict (float32 numpy arrays) of our params, in either layout."""
    hf_config_from_llama(config)  # refuses what HF cannot express
    params = nn.meta.unbox(params)
    if "params" in params and len(params) == 1:
        raise ValueError("Pass variables['params'], not the whole variables dict.")
    if config.scan_blocks:
        params = scanned_to_unrolled_params(params)
    if config.use_bias and np.any(np.asarray(params["lm_head"]["bias"]) != 0):
        raise ValueError("HF Llama's LM head has no bias, but this model's lm_head bias is non-zero.")
    state = {
        "model.embed_tokens.weight": params["embed"]["embedding"],
        "model.norm.weight": params["final_norm"]["scale"],
        "lm_head.weight": np.asarray(params["lm_head"]["kernel"]).T,
    }
    for i in range(config.num_blocks):
        block = params["block_stack"][f"block_{i}"]
        for hf_name, path, layout in _block_entries(config):
            state[f"model.layers.{i}.{hf_name}"] = _ours_to_hf(_get(block, path), layout)
    # np.array copies: torch.from_numpy needs writable, contiguous arrays.
    return {name: np.array(w, dtype=np.float32, order="C") for name, w in state.items()}


def import_hf(
    model_or_path: Any, *, allow_rms_norm_eps_mismatch: bool = False, **overrides: Any
) -> tuple[LlamaConfig, dict[str, Any]]:
    """(config, params) from an in-memory `LlamaForCausalLM` or a directory saved by HF."""
    if isinstance(model_or_path, str | os.PathLike):
        import torch
        import transformers

        model = transformers.LlamaForCausalLM.from_pretrained(model_or_path, dtype=torch.float32)
    else:
        model = model_or_path
    config = llama_config_from_hf(
        model.config, allow_rms_norm_eps_mismatch=allow_rms_norm_eps_mismatch, **overrides
    )
    return config, params_from_hf(model.state_dict(), config)


def export_hf(params: Mapping[str, Any], config: LlamaConfig, directory: str | None = None) -> Any:
    """A float32 `LlamaForCausalLM` holding `params`; also saved to `directory` when given."""
    import torch
    import transformers

    state = state_dict_from_params(params, config)
    model = transformers.LlamaForCausalLM(hf_config_from_llama(config)).to(torch.float32)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    model.eval()
    if directory is not None:
        model.save_pretrained(directory)
    return model


def _block_entries(config: LlamaConfig):
    return _BLOCK_WEIGHTS + (_BLOCK_BIASES if config.use_bias else ())


def _hf_to_ours(w: np.ndarray, layout: str, config: LlamaConfig) -> np.ndarray:
    n, h = config.num_heads, config.head_dim
    if layout == "to_heads":  # [N*H, D] -> [D, N, H]
        return w.T.reshape(w.shape[1], n, h)
    if layout == "from_heads":  # [D, N*H] -> [N, H, D]
        return w.T.reshape(n, h, w.shape[0])
    if layout == "head_bias":  # [N*H] -> [N, H]
        return w.reshape(n, h)
    if layout == "linear":  # torch stores [out, in]; flax [in, out]
        return w.T
    return w


def _ours_to_hf(w: Any, layout: str) -> np.ndarray:
    w = np.asarray(w)
    if layout == "to_heads":
        return w.reshape(w.shape[0], -1).T
    if layout == "from_heads":
        return w.reshape(-1, w.shape[-1]).T
    if layout == "head_bias":
        return w.reshape(-1)
    if layout == "linear":
        return w.T
    return w


def _rope_parameters(hf_config: Any) -> dict[str, Any]:
    """rope settings from transformers 5 (`rope_parameters`) or 4 (`rope_theta`, `rope_scaling`)."""
    rope = getattr(hf_config, "rope_parameters", None)
    if rope:
        return dict(rope)
    rope = dict(getattr(hf_config, "rope_scaling", None) or {})
    rope.setdefault("rope_theta", getattr(hf_config, "rope_theta", 1e4))
    return rope


def _ffn_sizing(d: int, hidden: int) -> tuple[int, float]:
    """(ffn_multiple_of, ffn_dim_multiplier) that make LlamaConfig.ffn_hidden_dim == hidden."""
    for multiple_of in (64, 128, 256, 512, 1024, 2048, 4096):
        if multiple_of * math.ceil(int(8 * d / 3) / multiple_of) == hidden:
            return multiple_of, 1.0
    # Otherwise round to a multiple of `hidden` itself from a multiplier that lands in (0, hidden].
    multiplier = hidden / (8 * d / 3)
    if hidden * math.ceil(int(8 * d / 3 * multiplier) / hidden) != hidden:
        raise ValueError(f"No ffn sizing of LlamaConfig gives intermediate_size={hidden} for d={d}.")
    return hidden, multiplier


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, possibly bfloat16, which numpy lacks
        import torch

        return value.detach().to(torch.float32).cpu().numpy()
    return np.asarray(value, dtype=np.float32)


def _set(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree
