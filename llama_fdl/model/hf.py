"""Weights in and out of HF `transformers`: Llama (2 and 3), Mistral and Qwen2 causal LMs.

These three share one layout: pre-norm RMSNorm blocks, rotary in the "rotate halves" convention,
SwiGLU, grouped-query attention; they differ in where biases sit (Qwen2: q/k/v only), in tied
embeddings and in rope scaling (Llama 3), all of which `LlamaConfig` has fields for. So
conversion is transposes and reshapes only. torch and transformers are imported inside the
functions that need them, so `import llama_fdl.model` stays free of torch.

What has no counterpart on the other side is refused with a ValueError, never dropped: on import,
another architecture, a sliding window, rope types other than default and llama3, heads * head_dim
!= hidden_size, another activation, biases on only attention or only MLP of a Llama; on export,
qk_norm, causal=False and logits_soft_cap. Export writes a `LlamaForCausalLM`, or a
`Qwen2ForCausalLM` for q/k/v-only biases, which Llama cannot express.

Shape legend: D embedding_dim, N query heads, K key/value heads, H head_dim, F ffn_hidden_dim,
V vocab_size.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import linen as nn

from llama_fdl import extras
from llama_fdl.model.config import ARCHITECTURE_FIELDS, LlamaConfig, RopeScaling, ffn_width
from llama_fdl.model.stack import scanned_to_unrolled_params, unrolled_to_scanned_params

MODEL_TYPES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
"""HF `model_type` -> the causal-LM class whose checkpoints import."""

# (HF name inside layer i, our path inside block_i, how the array is laid out on each side).
_BLOCK_WEIGHTS = (
    ("input_layernorm.weight", ("attention", "norm", "scale"), "same"),
    ("self_attn.q_proj.weight", ("attention", "query", "kernel"), "to_heads"),
    ("self_attn.k_proj.weight", ("attention", "key", "kernel"), "to_kv_heads"),
    ("self_attn.v_proj.weight", ("attention", "value", "kernel"), "to_kv_heads"),
    ("self_attn.o_proj.weight", ("attention", "out", "kernel"), "from_heads"),
    ("post_attention_layernorm.weight", ("ffn", "norm", "scale"), "same"),
    ("mlp.gate_proj.weight", ("ffn", "gate", "kernel"), "linear"),
    ("mlp.up_proj.weight", ("ffn", "up", "kernel"), "linear"),
    ("mlp.down_proj.weight", ("ffn", "down", "kernel"), "linear"),
)
_QKV_BIASES = (
    ("self_attn.q_proj.bias", ("attention", "query", "bias"), "head_bias"),
    ("self_attn.k_proj.bias", ("attention", "key", "bias"), "kv_head_bias"),
    ("self_attn.v_proj.bias", ("attention", "value", "bias"), "kv_head_bias"),
)
_OTHER_BIASES = (
    ("self_attn.o_proj.bias", ("attention", "out", "bias"), "same"),
    ("mlp.gate_proj.bias", ("ffn", "gate", "bias"), "same"),
    ("mlp.up_proj.bias", ("ffn", "up", "bias"), "same"),
    ("mlp.down_proj.bias", ("ffn", "down", "bias"), "same"),
)


def llama_config_from_hf(hf_config: Any, **overrides: Any) -> LlamaConfig:
    """The LlamaConfig of an HF Llama, Mistral or Qwen2 config; `overrides` set non-architecture
    fields (dtype, scan_blocks, attention_backend, ...)."""
    fixed = sorted(set(overrides) & set(ARCHITECTURE_FIELDS))
    if fixed:
        raise ValueError(f"{fixed} come from the HF checkpoint and cannot be overridden.")
    model_type = getattr(hf_config, "model_type", None)
    if model_type not in MODEL_TYPES:
        what = _describe(getattr(hf_config, "architectures", None), model_type)
        raise ValueError(f"The HF checkpoint is {what}, {_UNMAPPED}")
    heads = hf_config.num_attention_heads
    kv_heads = getattr(hf_config, "num_key_value_heads", None) or heads
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads
    d = hf_config.hidden_size
    problems = []
    if heads * head_dim != d:
        problems.append(f"heads * head_dim = {heads} * {head_dim} != hidden_size {d}")
    if hf_config.hidden_act != "silu":
        problems.append(f"hidden_act={hf_config.hidden_act!r} (only silu)")
    if getattr(hf_config, "sliding_window", None) is not None:
        problems.append(f"sliding_window={hf_config.sliding_window} (attention here sees the whole context)")
    use_bias = qkv_bias = False
    if model_type == "qwen2":
        qkv_bias = True
    elif model_type == "llama":
        use_bias = bool(hf_config.attention_bias)
        if hf_config.attention_bias != getattr(hf_config, "mlp_bias", False):
            problems.append("attention_bias and mlp_bias differ (use_bias covers both)")
    rope = _rope_parameters(hf_config)
    rope_type = rope.get("rope_type", "default")
    if rope_type not in ("default", "llama3"):
        problems.append(f"rope_type={rope_type!r} (only default and llama3 rope)")
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        problems.append(f"partial_rotary_factor={rope['partial_rotary_factor']} (rotary on every channel)")
    if problems:
        raise ValueError(f"This HF {model_type} model cannot be represented: " + "; ".join(problems) + ".")
    multiple_of, multiplier = _ffn_sizing(d, hf_config.intermediate_size)
    scaling = None
    if rope_type == "llama3":
        scaling = RopeScaling(
            factor=float(rope["factor"]),
            low_freq_factor=float(rope["low_freq_factor"]),
            high_freq_factor=float(rope["high_freq_factor"]),
            original_max_position_embeddings=int(rope["original_max_position_embeddings"]),
        )
    return LlamaConfig(
        vocab_size=hf_config.vocab_size,
        embedding_dim=d,
        num_blocks=hf_config.num_hidden_layers,
        head_dim=head_dim,
        theta=float(rope["rope_theta"]),
        ffn_multiple_of=multiple_of,
        ffn_dim_multiplier=multiplier,
        use_bias=use_bias,
        num_kv_heads=None if kv_heads == heads else kv_heads,
        norm_eps=float(hf_config.rms_norm_eps),
        rope_scaling=scaling,
        qkv_bias=qkv_bias,
        tie_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)),
        **overrides,
    )


def hf_config_from_llama(config: LlamaConfig) -> Any:
    """The `transformers` config of a LlamaConfig: a LlamaConfig, or a Qwen2Config for q/k/v-only
    biases; refuses what neither can express."""
    extras.require("hf", "Exporting to HF")
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
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": float(config.theta)}
    if config.rope_scaling is not None:
        rope = {**rope, "rope_type": "llama3", **dataclasses.asdict(config.rope_scaling)}
    common = {
        "vocab_size": config.vocab_size,
        "hidden_size": config.embedding_dim,
        "intermediate_size": config.ffn_hidden_dim,
        "num_hidden_layers": config.num_blocks,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": config.norm_eps,
        "rope_parameters": rope,
        "tie_word_embeddings": config.tie_embeddings,
        "bos_token_id": None,
        "eos_token_id": None,
    }
    if config.qkv_bias and not config.use_bias:
        return transformers.Qwen2Config(**common, use_sliding_window=False)
    return transformers.LlamaConfig(**common, attention_bias=config.use_bias, mlp_bias=config.use_bias)


def params_from_hf(state_dict: Mapping[str, Any], config: LlamaConfig) -> dict[str, Any]:
    """Our params (layout per `config.scan_blocks`) from an HF causal-LM state dict."""
    weights = {name: _to_numpy(value) for name, value in state_dict.items()}
    used = set()

    def take(name: str) -> np.ndarray:
        if name not in weights:
            raise ValueError(f"The HF state dict has no {name!r}; is it a {'/'.join(MODEL_TYPES.values())}?")
        used.add(name)
        return weights[name]

    params: dict[str, Any] = {
        "embed": {"embedding": take("model.embed_tokens.weight")},
        "final_norm": {"scale": take("model.norm.weight")},
        "block_stack": {},
    }
    if config.tie_embeddings:
        used.add("lm_head.weight")  # torch lists a tied head under its own name too
    else:
        # A checkpoint saved tied may store the head only as the embedding.
        head_name = "lm_head.weight" if "lm_head.weight" in weights else "model.embed_tokens.weight"
        params["lm_head"] = {"kernel": take(head_name).T}
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
    """HF state dict (float32 numpy arrays) of our params, in either layout."""
    hf_config_from_llama(config)  # refuses what HF cannot express
    params = nn.meta.unbox(params)
    if "params" in params and len(params) == 1:
        raise ValueError("Pass variables['params'], not the whole variables dict.")
    if config.scan_blocks:
        params = scanned_to_unrolled_params(params)
    if config.use_bias and np.any(np.asarray(params["lm_head"]["bias"]) != 0):
        raise ValueError("HF Llama's LM head has no bias, but this model's lm_head bias is non-zero.")
    embedding = params["embed"]["embedding"]
    head = embedding if config.tie_embeddings else np.asarray(params["lm_head"]["kernel"]).T
    state = {
        "model.embed_tokens.weight": embedding,
        "model.norm.weight": params["final_norm"]["scale"],
        "lm_head.weight": head,
    }
    for i in range(config.num_blocks):
        block = params["block_stack"][f"block_{i}"]
        for hf_name, path, layout in _block_entries(config):
            state[f"model.layers.{i}.{hf_name}"] = _ours_to_hf(_get(block, path), layout)
    # np.array copies: torch.from_numpy needs writable, contiguous arrays.
    return {name: np.array(w, dtype=np.float32, order="C") for name, w in state.items()}


def read_hf_config(directory: str | os.PathLike) -> Any:
    """The transformers config saved in `directory`, once its architecture is known to map."""
    extras.require("hf", "Reading an HF model")
    import transformers

    path = pathlib.Path(directory) / "config.json"
    if not path.is_file():
        raise ValueError(f"{directory} is not an HF model directory: it has no config.json.")
    saved = json.loads(path.read_text())
    if saved.get("model_type") not in MODEL_TYPES:
        what = _describe(saved.get("architectures"), saved.get("model_type"))
        raise ValueError(f"{directory} holds {what}, {_UNMAPPED}")
    return transformers.AutoConfig.from_pretrained(directory)


def import_hf(model_or_path: Any, **overrides: Any) -> tuple[LlamaConfig, dict[str, Any]]:
    """(config, params) from an in-memory HF causal LM or a directory saved by HF."""
    if isinstance(model_or_path, str | os.PathLike):
        extras.require("hf", "Importing an HF model")
        import torch
        import transformers

        config = llama_config_from_hf(read_hf_config(model_or_path), **overrides)
        model = transformers.AutoModelForCausalLM.from_pretrained(model_or_path, dtype=torch.float32)
    else:
        model = model_or_path
        config = llama_config_from_hf(model.config, **overrides)
    return config, params_from_hf(model.state_dict(), config)


def export_hf(params: Mapping[str, Any], config: LlamaConfig, directory: str | None = None) -> Any:
    """A float32 HF causal LM holding `params`; also saved to `directory` when given."""
    extras.require("hf", "Exporting to HF")
    import torch
    import transformers

    state = state_dict_from_params(params, config)
    model = transformers.AutoModelForCausalLM.from_config(hf_config_from_llama(config)).to(torch.float32)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    model.eval()
    if directory is not None:
        model.save_pretrained(directory)
    return model


_UNMAPPED = f"which llama_fdl does not map; it imports {', '.join(MODEL_TYPES.values())}."


def _describe(architectures: list[str] | None, model_type: str | None) -> str:
    """`a GPT2LMHeadModel (model_type 'gpt2')`, or without architectures `a model_type 'gpt2' model`."""
    if architectures:
        return f"a {'/'.join(architectures)} (model_type {model_type!r})"
    return f"a model_type {model_type!r} model"


def _block_entries(config: LlamaConfig):
    entries = _BLOCK_WEIGHTS
    if config.use_bias or config.qkv_bias:
        entries += _QKV_BIASES
    if config.use_bias:
        entries += _OTHER_BIASES
    return entries


def _hf_to_ours(w: np.ndarray, layout: str, config: LlamaConfig) -> np.ndarray:
    n, k, h = config.num_heads, config.kv_heads, config.head_dim
    if layout == "to_heads":  # [N*H, D] -> [D, N, H]
        return w.T.reshape(w.shape[1], n, h)
    if layout == "to_kv_heads":  # [K*H, D] -> [D, K, H]
        return w.T.reshape(w.shape[1], k, h)
    if layout == "from_heads":  # [D, N*H] -> [N, H, D]
        return w.T.reshape(n, h, w.shape[0])
    if layout == "head_bias":  # [N*H] -> [N, H]
        return w.reshape(n, h)
    if layout == "kv_head_bias":  # [K*H] -> [K, H]
        return w.reshape(k, h)
    if layout == "linear":  # torch stores [out, in]; flax [in, out]
        return w.T
    return w


def _ours_to_hf(w: Any, layout: str) -> np.ndarray:
    w = np.asarray(w)
    if layout in ("to_heads", "to_kv_heads"):
        return w.reshape(w.shape[0], -1).T
    if layout == "from_heads":
        return w.reshape(-1, w.shape[-1]).T
    if layout in ("head_bias", "kv_head_bias"):
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
        if ffn_width(d, 1.0, multiple_of) == hidden:
            return multiple_of, 1.0
    # Otherwise round to a multiple of `hidden` itself from a multiplier that lands in (0, hidden].
    multiplier = hidden / (8 * d / 3)
    if ffn_width(d, multiplier, hidden) != hidden:
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
