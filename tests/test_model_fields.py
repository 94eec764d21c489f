"""Each LlamaConfig field changes what the model computes, in the way its docstring says.

Every test here would fail if the field were ignored. The blocks are compared with float64 NumPy
references written independently of the model code (rotary as complex rotation of channel pairs
(i, i + H/2), softmax attention, SwiGLU).
"""

import dataclasses
import functools
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from llama_fdl.model import FFNBlock, LlamaConfig, LlamaTransformer, ParallelConfig, SelfAttentionBlock
from llama_fdl.model import remat as remat_lib

# Tolerances fixed in advance: float32 model against a float64 reference, and two float32
# computations that should agree up to reassociation.
REF_ATOL = 1e-5
SAME_ATOL = 1e-5
EPS = 1e-6


def tiny(**overrides) -> LlamaConfig:
    return LlamaConfig(
        **{"vocab_size": 64, "embedding_dim": 32, "num_blocks": 2, "head_dim": 16, **overrides}
    )


def randomized(params, seed: int):
    """Params whose norm scales and biases are random too (init leaves them 1 and 0), so a
    reference that skipped either would disagree; kernels keep their well-scaled init."""

    def perturb(path, leaf):
        key = jax.random.fold_in(
            jax.random.PRNGKey(seed), zlib.crc32(jax.tree_util.keystr(path).encode()) % 2**31
        )
        if path[-1].key == "scale":
            return 1.0 + 0.3 * jax.random.normal(key, leaf.shape)
        if path[-1].key == "bias":
            return 0.3 * jax.random.normal(key, leaf.shape)
        return leaf

    return jax.tree_util.tree_map_with_path(perturb, params)


def tokens(batch=2, seq=12, vocab=64, seed=1):
    return jax.random.randint(jax.random.PRNGKey(seed), (batch, seq), 0, vocab)


_COMPILED: dict[str, object] = {}


def _jitted(config: LlamaConfig, method: str, **static):
    """One compiled init/apply per (config, static arguments): on CPU compiling once is much
    faster than running tiny ops one by one, and recompiling per call would waste that."""
    key = repr((config, method, sorted(static.items())))
    if key not in _COMPILED:
        module = LlamaTransformer(config)
        _COMPILED[key] = jax.jit(functools.partial(getattr(module, method), **static))
    return _COMPILED[key]


def init(config: LlamaConfig, idx):
    return nn.meta.unbox(_jitted(config, "init")(jax.random.PRNGKey(0), idx)["params"])


def logits(config: LlamaConfig, params, idx, rngs=None, **static):
    """Logits (or (logits, state) with `mutable`); `static` are train, capture_intermediates, ..."""
    if rngs is None:
        return _jitted(config, "apply", **static)({"params": params}, idx)
    return _jitted(config, "apply", **static)({"params": params}, idx, rngs=rngs)


# ----------------------------------------------------------------------------- references


def ref_rms(x, scale):
    return x / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + EPS) * scale


def ref_rotary(x_BSNH, pos_BS, theta):
    half = x_BSNH.shape[-1] // 2
    freq_K = theta ** (-2.0 * np.arange(half) / x_BSNH.shape[-1])
    z = (x_BSNH[..., :half] + 1j * x_BSNH[..., half:]) * np.exp(1j * pos_BS[:, :, None, None] * freq_K)
    return np.concatenate([z.real, z.imag], axis=-1)


def ref_attention_block(x_BSD, p, config, pos_BS, scale):
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
    h = ref_rms(x_BSD, p["norm"]["scale"])
    q, k, v = (
        np.einsum("bsd,dnh->bsnh", h, p[name]["kernel"]) + p[name].get("bias", 0.0)
        for name in ("query", "key", "value")
    )
    if config.qk_norm:
        q, k = ref_rms(q, p["query_norm"]["scale"]), ref_rms(k, p["key_norm"]["scale"])
    q, k = ref_rotary(q, pos_BS, config.theta), ref_rotary(k, pos_BS, config.theta)
    scores = np.einsum("bsnh,btnh->bnst", q, k) * scale
    seq = x_BSD.shape[1]
    if config.causal:
        scores = np.where(np.tril(np.ones((seq, seq), bool)), scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    o = np.einsum("bnst,btnh->bsnh", probs, v)
    return x_BSD + np.einsum("bsnh,nhd->bsd", o, p["out"]["kernel"]) + p["out"].get("bias", 0.0)


def ref_ffn_block(x_BSD, p):
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
    h = ref_rms(x_BSD, p["norm"]["scale"])
    gate = h @ p["gate"]["kernel"] + p["gate"].get("bias", 0.0)
    up = h @ p["up"]["kernel"] + p["up"].get("bias", 0.0)
    silu = gate / (1.0 + np.exp(-gate))
    return x_BSD + (silu * up) @ p["down"]["kernel"] + p["down"].get("bias", 0.0)


# ----------------------------------------------------------------------------- attention block


def run_attention_block(config, seed=0):
    x_BSD = jax.random.normal(jax.random.PRNGKey(seed), (2, 10, config.embedding_dim))
    pos_BS = jnp.broadcast_to(jnp.arange(10) * 3 + 5, (2, 10))  # non-trivial rotary angles
    block = SelfAttentionBlock(config)
    params = randomized(
        nn.meta.unbox(jax.jit(block.init)(jax.random.PRNGKey(1), x_BSD, pos_BS))["params"], seed
    )
    out = jax.jit(block.apply)({"params": params}, x_BSD, pos_BS)
    return np.asarray(x_BSD, np.float64), np.asarray(pos_BS), params, np.asarray(out)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"head_dim": 8},  # 4 heads of 8: scale 1/sqrt(8), not 1/num_heads
        {"theta": 500.0},
        {"qk_norm": True, "use_bias": True},
        {"causal": False, "head_dim": 32},
    ],
)
def test_attention_block_matches_reference(overrides):
    config = tiny(**overrides)
    x, pos, params, out = run_attention_block(config)
    assert params["query"]["kernel"].shape == (32, config.num_heads, config.head_dim)
    expected = ref_attention_block(x, params, config, pos, scale=1 / np.sqrt(config.head_dim))
    np.testing.assert_allclose(out, expected, atol=REF_ATOL, rtol=0)


def test_attention_reference_notices_a_wrong_scale_or_theta():
    # Control: the reference comparison above is sensitive to the quantities it checks.
    config = tiny(head_dim=8, qk_norm=True)
    x, pos, params, out = run_attention_block(config)
    by_heads = ref_attention_block(x, params, config, pos, scale=1 / config.num_heads)  # xlstm_jax's bug
    assert np.abs(out - by_heads).max() > 100 * REF_ATOL
    other_theta = ref_attention_block(
        x, params, dataclasses.replace(config, theta=500.0), pos, 1 / np.sqrt(8)
    )
    assert np.abs(out - other_theta).max() > 100 * REF_ATOL
    no_qk_norm = ref_attention_block(
        x, params, dataclasses.replace(config, qk_norm=False), pos, 1 / np.sqrt(8)
    )
    assert np.abs(out - no_qk_norm).max() > 100 * REF_ATOL


def test_qk_norm_adds_per_head_norm_params_only_when_set():
    _, _, with_norm, _ = run_attention_block(tiny(qk_norm=True))
    _, _, without, _ = run_attention_block(tiny())
    assert with_norm["query_norm"]["scale"].shape == (16,)
    assert with_norm["key_norm"]["scale"].shape == (16,)
    assert "query_norm" not in without and "key_norm" not in without


# ----------------------------------------------------------------------------- FFN block


@pytest.mark.parametrize("use_bias", [False, True])
def test_ffn_block_is_swiglu(use_bias):
    config = tiny(use_bias=use_bias)
    x_BSD = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 32))
    block = FFNBlock(config)
    params = randomized(nn.meta.unbox(jax.jit(block.init)(jax.random.PRNGKey(1), x_BSD))["params"], 3)
    out = np.asarray(jax.jit(block.apply)({"params": params}, x_BSD))
    assert ("bias" in params["gate"]) == use_bias
    np.testing.assert_allclose(
        out, ref_ffn_block(np.asarray(x_BSD, np.float64), params), atol=REF_ATOL, rtol=0
    )
    # Control: swapping gate and up (silu on the wrong branch) is noticed.
    swapped = {**params, "gate": params["up"], "up": params["gate"]}
    assert np.abs(out - ref_ffn_block(np.asarray(x_BSD, np.float64), swapped)).max() > 100 * REF_ATOL


# ----------------------------------------------------------------------------- whole model


def test_use_bias_adds_biases_everywhere_including_the_head():
    idx = tokens()
    params = init(tiny(use_bias=True), idx)
    paths = {"/".join(str(k.key) for k in path) for path, _ in jax.tree_util.tree_leaves_with_path(params)}
    for name in (
        "attention/query",
        "attention/key",
        "attention/value",
        "attention/out",
        "ffn/gate",
        "ffn/up",
        "ffn/down",
    ):
        assert f"block_stack/blocks/{name}/bias" in paths
    assert "lm_head/bias" in paths
    assert not any(p.endswith("bias") for p in _paths(init(tiny(), idx)))
    # The head bias is really added to the logits.
    bumped = jax.tree.map(lambda x: x, params)
    bumped["lm_head"]["bias"] = params["lm_head"]["bias"].at[3].set(1.0)
    delta = logits(tiny(use_bias=True), bumped, idx) - logits(tiny(use_bias=True), params, idx)
    np.testing.assert_allclose(delta[..., 3], 1.0, atol=SAME_ATOL)
    np.testing.assert_allclose(np.delete(np.asarray(delta), 3, axis=-1), 0.0, atol=SAME_ATOL)


def _paths(params):
    return {"/".join(str(k.key) for k in path) for path, _ in jax.tree_util.tree_leaves_with_path(params)}


def test_scan_blocks_controls_the_param_layout():
    idx = tokens()
    scanned = init(tiny(scan_blocks=True), idx)["block_stack"]
    unrolled = init(tiny(scan_blocks=False), idx)["block_stack"]
    assert set(scanned) == {"blocks"}
    assert scanned["blocks"]["ffn"]["norm"]["scale"].shape == (2, 32)
    assert set(unrolled) == {"block_0", "block_1"}
    assert unrolled["block_0"]["ffn"]["norm"]["scale"].shape == (32,)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_dtype_sets_compute_but_params_and_logits_stay_float32(dtype):
    config = tiny(dtype=dtype)
    idx = tokens()
    params = init(config, idx)
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    out, state = logits(config, params, idx, capture_intermediates=True, mutable=["intermediates"])
    assert out.dtype == jnp.float32
    captured = state["intermediates"]
    assert captured["embed"]["__call__"][0].dtype == jnp.dtype(dtype)
    assert captured["block_stack"]["__call__"][0].dtype == jnp.dtype(dtype)
    reference = logits(tiny(), params, idx)
    difference = float(jnp.abs(out - reference).max())
    if dtype == "float32":
        assert difference == 0.0
    else:  # 16-bit compute is close to float32 but visibly not the same computation
        assert 1e-4 < difference < 0.25


def test_dropout_only_in_train_and_reproducible_from_the_rng():
    config = tiny(dropout_rate=0.3)
    idx = tokens()
    params = init(config, idx)
    eval_out = logits(config, params, idx)
    np.testing.assert_array_equal(eval_out, logits(tiny(), params, idx))

    def train(seed):
        return logits(config, params, idx, train=True, rngs={"dropout": jax.random.PRNGKey(seed)})

    np.testing.assert_array_equal(train(0), train(0))
    assert float(jnp.abs(train(0) - train(1)).max()) > 1e-3
    assert float(jnp.abs(train(0) - eval_out).max()) > 1e-3
    # dropout_rate=0 in train mode is the eval computation.
    no_rate = logits(tiny(), params, idx, train=True, rngs={"dropout": jax.random.PRNGKey(0)})
    np.testing.assert_array_equal(no_rate, eval_out)


def test_add_embedding_dropout_drops_embeddings_only_when_set():
    idx = tokens()
    params = init(tiny(), idx)

    def train(**overrides):
        out, state = logits(
            tiny(dropout_rate=0.3, **overrides),
            params,
            idx,
            train=True,
            rngs={"dropout": jax.random.PRNGKey(0)},
            capture_intermediates=True,
            mutable=["intermediates"],
        )
        return out, state["intermediates"]

    without, _ = train()
    with_dropout, captured = train(add_embedding_dropout=True)
    dropped = captured["Dropout_0"]["__call__"][0]
    kept = captured["embed"]["__call__"][0]
    zeros = float(jnp.mean(dropped == 0))
    assert 0.15 < zeros < 0.45  # about dropout_rate of the embedding entries are dropped
    np.testing.assert_allclose(jnp.where(dropped == 0, 0, kept / 0.7), dropped, rtol=1e-6)
    assert float(jnp.abs(with_dropout - without).max()) > 1e-3
    assert "Dropout_0" not in train()[1]


def test_logits_soft_cap_applies_tanh_cap():
    idx = tokens()
    params = init(tiny(), idx)
    uncapped = logits(tiny(), params, idx)
    assert float(jnp.abs(uncapped).max()) > 1.0  # control: the cap below really binds
    capped = logits(tiny(logits_soft_cap=0.5), params, idx)
    assert float(jnp.abs(capped).max()) < 0.5
    np.testing.assert_allclose(capped, 0.5 * jnp.tanh(uncapped / 0.5), atol=SAME_ATOL)


def test_minimal_remat_is_the_default_and_keeps_the_attention_kernel():
    """ "minimal" recomputes the elementwise work but not a fused attention kernel, which
    dots_saveable (the control) runs again in the backward pass."""
    assert ParallelConfig().remat == "minimal"
    idx = tokens()
    kernels = {}
    for remat in ("none", "minimal", "dots_saveable"):
        config = tiny(attention_backend="pallas_triton", parallel=ParallelConfig(remat=remat))
        params = jax.eval_shape(LlamaTransformer(config).init, jax.random.key(0), idx)

        def loss(p, config=config):
            return jnp.mean(LlamaTransformer(config).apply(p, idx) ** 2)

        grad = jax.make_jaxpr(jax.grad(loss))(params).jaxpr
        kernels[remat] = sum(name == "pallas_call" for name, _ in _primitives(grad))
    assert kernels["minimal"] == kernels["none"] > 0
    assert kernels["dots_saveable"] > kernels["none"]


def _primitives(jaxpr):
    """(name, params) of every equation, descending into sub-jaxprs (scan bodies, remat)."""
    for eqn in jaxpr.eqns:
        yield eqn.primitive.name, eqn.params
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple | list) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _primitives(inner)


@pytest.mark.parametrize("scan_blocks", [True, False])
def test_remat_keeps_results_and_inserts_checkpoints(scan_blocks):
    idx = tokens()
    params = init(tiny(scan_blocks=scan_blocks), idx)
    results = {}
    for remat in ("none", "minimal", "full", "dots_saveable"):
        config = tiny(scan_blocks=scan_blocks, parallel=ParallelConfig(remat=remat))

        def loss(p, config=config):
            return jnp.mean(logits(config, p, idx) ** 2)

        results[remat] = jax.jit(jax.value_and_grad(loss))(params)
        names = [(name, params_) for name, params_ in _primitives(jax.make_jaxpr(loss)(params).jaxpr)]
        checkpoints = [p for name, p in names if name.startswith(("checkpoint", "remat"))]
        if remat == "none":
            assert not checkpoints
        else:
            assert checkpoints
            expected_policy = {
                "full": None,
                "minimal": remat_lib.keep_matmuls_and_attention_kernels,
                "dots_saveable": jax.checkpoint_policies.dots_saveable,
            }[remat]
            assert all(p["policy"] is expected_policy for p in checkpoints)
    for remat in ("minimal", "full", "dots_saveable"):
        for a, b in zip(jax.tree.leaves(results[remat]), jax.tree.leaves(results["none"]), strict=True):
            np.testing.assert_allclose(a, b, atol=SAME_ATOL, rtol=SAME_ATOL)
