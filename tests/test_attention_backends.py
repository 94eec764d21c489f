"""Attention backends: xla against a hand-written reference, the others against xla.

On CPU the Pallas kernel runs in interpret mode (slow, so shapes are minimal); the compiled
Triton kernel and cuDNN run in the tests marked `gpu`, which skip visibly on a machine without
a GPU and fail on one whose GPU JAX does not use (tests/conftest.py).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from llama_fdl.model import LlamaConfig, LlamaTransformer
from llama_fdl.model.attention_backends import attend

# Fixed in advance. CPU: float32 against float32 (or a float64 reference). GPU: Triton and
# cuDNN use TF32 / 16-bit matmuls, so their comparisons carry wider, still fixed, bounds.
CPU_ATOL = 1e-5
GPU_F32_TOL = 2e-2
GPU_BF16_TOL = 5e-2
DIFFERENT = 1e-1  # a control must differ by at least this much to count

ON_GPU = jax.default_backend() == "gpu"
# On a GPU the Pallas kernel is compiled with TF32 matmuls; CPU_ATOL holds for interpret mode only.
interpret_only = pytest.mark.skipif(
    ON_GPU, reason="interpret-mode check; the gpu tests cover the compiled kernel"
)


def qkv(batch, seq, heads, head_dim, seed=0, dtype=jnp.float32):
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    return tuple(jax.random.normal(k, (batch, seq, heads, head_dim), dtype) for k in keys)


def two_documents(batch, seq, first_len):
    return jnp.broadcast_to(jnp.where(jnp.arange(seq) < first_len, 1, 2), (batch, seq)).astype(jnp.int32)


def reference(q, k, v, segment_ids, causal):
    """float64 NumPy attention with scale 1/sqrt(head_dim)."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    scores = np.einsum("bsnh,btnh->bnst", q, k) / np.sqrt(q.shape[-1])
    seq = q.shape[1]
    allowed = np.ones((q.shape[0], seq, seq), bool)
    if causal:
        allowed &= np.tril(np.ones((seq, seq), bool))
    if segment_ids is not None:
        ids = np.asarray(segment_ids)
        allowed &= ids[:, :, None] == ids[:, None, :]
    scores = np.where(allowed[:, None], scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return np.einsum("bnst,btnh->bsnh", probs, v)


def run(backend, q, k, v, segment_ids, causal):
    """Output and gradients w.r.t. q, k, v of a fixed weighted sum of the output."""
    scale = 1.0 / np.sqrt(q.shape[-1])
    weights = jax.random.normal(jax.random.PRNGKey(42), q.shape, jnp.float32)

    def loss(q, k, v):
        out = attend(q, k, v, segment_ids_BS=segment_ids, causal=causal, scale=scale, backend=backend)
        return jnp.sum(out.astype(jnp.float32) * weights), out

    # "highest" keeps xla's float32 matmuls exact on GPUs too (no effect on CPU, nor on Pallas).
    with jax.default_matmul_precision("highest"):
        (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return out, grads


def assert_close(actual, expected, tol):
    for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), atol=tol, rtol=tol)


def max_difference(a, b):
    return max(
        float(jnp.abs(x.astype(jnp.float32) - y.astype(jnp.float32)).max())
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


# ----------------------------------------------------------------------------- xla


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("segments", [False, True])
def test_xla_matches_hand_written_reference(causal, segments):
    q, k, v = qkv(2, 12, 3, 8)
    segment_ids = two_documents(2, 12, 5) if segments else None
    out, _ = run("xla", q, k, v, segment_ids, causal)
    np.testing.assert_allclose(out, reference(q, k, v, segment_ids, causal), atol=CPU_ATOL, rtol=0)
    # Control: the reference tells masked from unmasked attention apart.
    other = reference(q, k, v, None if segments else two_documents(2, 12, 5), not causal)
    assert np.abs(np.asarray(out) - other).max() > DIFFERENT


# ----------------------------------------------------------------------------- pallas


@interpret_only
@pytest.mark.parametrize(
    "seq, head_dim, causal, segments",
    [
        (32, 16, True, False),
        (32, 16, True, True),
        (32, 16, False, False),
        (32, 16, False, True),
        (20, 8, False, False),  # padded to 32 and 16: padding must stay invisible without a mask
        (20, 8, True, True),
    ],
)
def test_pallas_equals_xla_outputs_and_gradients(seq, head_dim, causal, segments):
    q, k, v = qkv(1, seq, 2, head_dim, seed=seq)
    segment_ids = two_documents(1, seq, 11) if segments else None
    expected = run("xla", q, k, v, segment_ids, causal)
    actual = run("pallas_triton", q, k, v, segment_ids, causal)
    assert_close(actual, expected, CPU_ATOL)


@interpret_only
def test_pallas_comparison_notices_a_wrong_mask():
    # Control for the equivalences above: dropping the document mask changes outputs and grads.
    q, k, v = qkv(1, 32, 2, 16, seed=32)
    with_mask = run("pallas_triton", q, k, v, two_documents(1, 32, 11), True)
    without = run("xla", q, k, v, None, True)
    assert max_difference(with_mask[0], without[0]) > DIFFERENT
    assert max_difference(with_mask[1], without[1]) > DIFFERENT


# ----------------------------------------------------------------------------- grouped-query


def grouped_run(backend, q, k, v, segment_ids, causal, copies=None):
    """Like `run`, with k and v of fewer heads. `copies` first gives every query head its own
    copy of its key/value head: "consecutive" (query head n reads n // G, HF's grouping, which
    grouped attention must equal) or "interleaved" (n reads n % K, a different function)."""
    groups = q.shape[2] // k.shape[2]
    weights = jax.random.normal(jax.random.PRNGKey(42), q.shape, jnp.float32)
    expand = {
        None: lambda x: x,
        "consecutive": lambda x: jnp.repeat(x, groups, axis=2),
        "interleaved": lambda x: jnp.tile(x, (1, 1, groups, 1)),
    }[copies]

    def loss(q, k, v):
        out = attend(
            q,
            expand(k),
            expand(v),
            segment_ids_BS=segment_ids,
            causal=causal,
            scale=q.shape[-1] ** -0.5,
            backend=backend,
        )
        return jnp.sum(out.astype(jnp.float32) * weights), out

    with jax.default_matmul_precision("highest"):
        (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return out, grads


def gqa_inputs(seq, head_dim, dtype=jnp.float32):
    q = qkv(1, seq, 4, head_dim, seed=7, dtype=dtype)[0]
    _, k, v = qkv(1, seq, 2, head_dim, seed=8, dtype=dtype)
    return q, k, v


@pytest.mark.parametrize(
    "backend", ["xla", pytest.param("pallas_triton", marks=interpret_only)], ids=["xla", "pallas_interpret"]
)
def test_grouped_query_attention_equals_repeated_key_value_heads(backend):
    # Query heads 0, 1 read key/value head 0 and heads 2, 3 read head 1 (HF's grouping).
    q, k, v = gqa_inputs(16, 16)
    segment_ids = two_documents(1, 16, 6)
    expected = grouped_run("xla", q, k, v, segment_ids, True, copies="consecutive")
    assert_close(grouped_run(backend, q, k, v, segment_ids, True), expected, CPU_ATOL)
    # Control: the interleaved grouping (head n reads n % K) is a different function.
    interleaved = grouped_run("xla", q, k, v, segment_ids, True, copies="interleaved")
    assert max_difference(interleaved[0], expected[0]) > DIFFERENT


def tiny(**overrides) -> LlamaConfig:
    return LlamaConfig(
        **{"vocab_size": 64, "embedding_dim": 32, "num_blocks": 2, "head_dim": 16, **overrides}
    )


def model_loss_and_grads(config, params, idx, segment_ids):
    def loss(p):
        out = LlamaTransformer(config).apply({"params": p}, idx, segment_ids=segment_ids)
        return jnp.mean(jax.nn.log_softmax(out)[..., 0]), out

    return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)


@interpret_only
def test_pallas_model_equals_xla_model():
    config = tiny(mask_across_document_boundaries=True)
    idx = jax.random.randint(jax.random.PRNGKey(0), (1, 16), 0, 64)
    segment_ids = two_documents(1, 16, 6)
    params = nn.meta.unbox(jax.jit(LlamaTransformer(config).init)(jax.random.PRNGKey(1), idx)["params"])
    pallas_config = tiny(mask_across_document_boundaries=True, attention_backend="pallas_triton")
    assert_close(
        model_loss_and_grads(pallas_config, params, idx, segment_ids),
        model_loss_and_grads(config, params, idx, segment_ids),
        CPU_ATOL,
    )
    # The backend field really selects the kernel: only the pallas model contains a pallas_call.
    jaxprs = {
        backend: str(jax.make_jaxpr(lambda p, c=c: LlamaTransformer(c).apply({"params": p}, idx))(params))
        for backend, c in (("xla", config), ("pallas", pallas_config))
    }
    assert "pallas_call" in jaxprs["pallas"] and "pallas_call" not in jaxprs["xla"]


# ----------------------------------------------------------------------------- cudnn


def test_cudnn_is_checked_against_the_platform_with_the_config():
    """Once per launch, at config-check time (runner.check calls it), not in every forward pass."""
    config = tiny(attention_backend="cudnn", dtype="bfloat16")
    for platform in ("cpu", "tpu"):
        with pytest.raises(ValueError, match=rf"needs a GPU, but JAX runs on '{platform}'; use attention_"):
            config.check_platform(platform)
    config.check_platform("gpu")  # control: a GPU and a 16-bit dtype pass
    with pytest.raises(ValueError, match="supports dtype bfloat16 or float16, not float32"):
        tiny(attention_backend="cudnn").check_platform("gpu")
    tiny().check_platform("cpu")  # control: xla runs anywhere


# ----------------------------------------------------------------------------- GPU only


@pytest.mark.gpu
@pytest.mark.parametrize(
    "seq, head_dim, causal, segments",
    [(256, 64, True, False), (256, 64, True, True), (256, 64, False, True), (200, 48, False, False)],
)
def test_compiled_pallas_equals_xla_on_gpu(seq, head_dim, causal, segments):
    q, k, v = qkv(2, seq, 4, head_dim, seed=seq)
    segment_ids = two_documents(2, seq, 77) if segments else None
    expected = run("xla", q, k, v, segment_ids, causal)
    actual = run("pallas_triton", q, k, v, segment_ids, causal)
    assert_close(actual, expected, GPU_F32_TOL)
    if segments:  # control
        assert max_difference(actual, run("xla", q, k, v, None, causal)) > DIFFERENT


@pytest.mark.gpu
@pytest.mark.parametrize("causal, segments", [(True, False), (True, True), (False, True)])
def test_cudnn_equals_xla_on_gpu(causal, segments):
    q, k, v = qkv(2, 128, 4, 64, seed=5, dtype=jnp.bfloat16)
    segment_ids = two_documents(2, 128, 50) if segments else None
    # Reference: xla in float32 on the same bf16-rounded inputs.
    expected = run("xla", *(x.astype(jnp.float32) for x in (q, k, v)), segment_ids, causal)
    actual = run("cudnn", q, k, v, segment_ids, causal)
    assert_close(actual, expected, GPU_BF16_TOL)
    if segments:  # control
        assert max_difference(actual, run("cudnn", q, k, v, None, causal)) > DIFFERENT


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["pallas_triton", "cudnn"])
def test_grouped_query_attention_on_gpu_equals_repeated_heads(backend):
    dtype = jnp.bfloat16 if backend == "cudnn" else jnp.float32
    q, k, v = gqa_inputs(128, 64, dtype)
    segment_ids = two_documents(1, 128, 50)
    f32 = tuple(x.astype(jnp.float32) for x in (q, k, v))
    expected = grouped_run("xla", *f32, segment_ids, True, copies="consecutive")
    tol = GPU_BF16_TOL if backend == "cudnn" else GPU_F32_TOL
    assert_close(grouped_run(backend, q, k, v, segment_ids, True), expected, tol)


@pytest.mark.gpu
def test_cudnn_model_runs_on_gpu():
    idx = jax.random.randint(jax.random.PRNGKey(0), (2, 64), 0, 64)
    segment_ids = two_documents(2, 64, 20)
    xla_config = tiny(dtype="bfloat16", mask_across_document_boundaries=True)
    params = nn.meta.unbox(jax.jit(LlamaTransformer(xla_config).init)(jax.random.PRNGKey(1), idx)["params"])
    cudnn_config = tiny(dtype="bfloat16", mask_across_document_boundaries=True, attention_backend="cudnn")
    apply = functools.partial(LlamaTransformer(cudnn_config).apply, {"params": params}, idx)
    out = jax.jit(lambda s: apply(segment_ids=s))(segment_ids)
    reference_out = LlamaTransformer(xla_config).apply({"params": params}, idx, segment_ids=segment_ids)
    assert_close(out, reference_out, 2 * GPU_BF16_TOL)  # two bf16 blocks deep
