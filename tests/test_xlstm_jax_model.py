"""Model details that xlstm-jax users carry over: the FFN width formula, the positional
`TransformerBlockStack` call, sub-layer remat, the small/wang initialisation and the sown
intermediates."""

import itertools

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from llama_fdl.model import (
    LlamaConfig,
    LlamaTransformer,
    ParallelConfig,
    TransformerBlockStack,
    blocks,
    scanned_to_unrolled_params,
)
from llama_fdl.model.initializers import small_init_std, wang_init_std
from llama_fdl.model.stack import per_block_intermediates


def config(**overrides) -> LlamaConfig:
    fields = {"vocab_size": 64, "embedding_dim": 32, "num_blocks": 2, "head_dim": 8, **overrides}
    return LlamaConfig(**fields)


# --- FFN width -------------------------------------------------------------------------------


def meta_ffn_width(d: int, multiplier: float | None, multiple_of: int) -> int:
    """Meta's llama/model.py FeedForward sizing, written as it is there (hidden_dim = 4 * dim)."""
    hidden_dim = int(2 * (4 * d) / 3)
    if multiplier is not None:
        hidden_dim = int(multiplier * hidden_dim)
    return multiple_of * ((hidden_dim + multiple_of - 1) // multiple_of)


GRID = list(
    itertools.product(
        (8, 32, 88, 96, 136, 768, 2048, 4096), (None, 0.75, 1.0, 1.3, 1.5, 2.0), (1, 8, 16, 64, 256)
    )
)


def test_ffn_width_follows_metas_formula_over_a_grid():
    for d, multiplier, multiple_of in GRID:
        cfg = config(embedding_dim=d, ffn_dim_multiplier=multiplier, ffn_multiple_of=multiple_of)
        assert cfg.ffn_hidden_dim == meta_ffn_width(d, multiplier, multiple_of), (d, multiplier, multiple_of)


def test_the_grid_holds_shapes_where_the_old_formula_differed():
    # Control: the grid would notice a return to int(8D/3 * m), which gives other widths here.
    def old(d, m, k):
        return k * -(-int(8 * d / 3 * (m or 1.0)) // k)

    differing = [(d, m, k) for d, m, k in GRID if old(d, m, k) != meta_ffn_width(d, m, k)]
    assert (88, 1.3, 16) in differing and len(differing) >= 10
    assert config(embedding_dim=88, ffn_dim_multiplier=1.3, ffn_multiple_of=16).ffn_hidden_dim == 304


def test_no_multiplier_is_none_and_one_point_zero_alike():
    assert config(ffn_dim_multiplier=None).ffn_hidden_dim == config(ffn_dim_multiplier=1.0).ffn_hidden_dim
    with pytest.raises(ValueError, match="ffn_dim_multiplier=0 must be > 0, or None"):
        config(ffn_dim_multiplier=0)


# --- The positional document_borders call ---------------------------------------------------


def test_positional_document_borders_mean_what_they_mean_in_xlstm_jax():
    cfg = config(mask_across_document_boundaries=True)
    stack = TransformerBlockStack(cfg)
    x_BSD = jax.random.normal(jax.random.key(1), (2, 12, 32))
    pos_BS = jnp.tile(jnp.array([0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6]), (2, 1))
    borders_BS = pos_BS == 0
    params = stack.init(jax.random.key(0), x_BSD)
    apply = jax.jit(stack.apply)
    positional = apply(params, x_BSD, pos_BS, borders_BS)  # xlstm-jax's call
    segment_ids = jnp.cumsum(borders_BS.astype(jnp.int32), axis=1)
    by_ids = apply(params, x_BSD, pos_BS, segment_ids=segment_ids)
    np.testing.assert_allclose(positional, by_ids, atol=1e-6)
    # Control: the second document's tokens would differ had the borders been ignored.
    unmasked = apply(params, x_BSD, pos_BS)
    assert not np.allclose(positional[:, 5:], unmasked[:, 5:], atol=1e-3)
    np.testing.assert_allclose(positional[:, :5], unmasked[:, :5], atol=1e-6)


def test_boolean_segment_ids_are_refused():
    stack = TransformerBlockStack(config(mask_across_document_boundaries=True))
    x_BSD = jnp.zeros((1, 4, 32))
    with pytest.raises(ValueError, match="boolean segment_ids.*document_borders"):
        stack.init(jax.random.key(0), x_BSD, segment_ids=jnp.array([[True, False, True, False]]))


# --- Sub-layer remat ------------------------------------------------------------------------


def _checkpointed(jaxpr) -> list:
    """The jaxprs of every remat (checkpoint) call, however deeply nested (scan bodies too)."""
    found = []
    for eqn in jaxpr.eqns:
        inner = [v for v in eqn.params.values() if isinstance(v, jex.ClosedJaxpr | jex.Jaxpr)]
        if eqn.primitive.name in ("checkpoint", "remat2"):
            found.append(inner[0])
        for sub in inner:
            found += _checkpointed(sub.jaxpr if isinstance(sub, jex.ClosedJaxpr) else sub)
    return found


def _primitives(jaxpr) -> set[str]:
    jaxpr = jaxpr.jaxpr if isinstance(jaxpr, jex.ClosedJaxpr) else jaxpr
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for v in eqn.params.values():
            if isinstance(v, jex.ClosedJaxpr | jex.Jaxpr):
                names |= _primitives(v)
    return names


@pytest.mark.parametrize("scan", [True, False], ids=["scan", "unrolled"])
def test_remat_wraps_exactly_the_named_sublayers(scan):
    idx = jnp.zeros((2, 8), jnp.int32)
    wrapped = {}
    for remat in ("none", "full", "attention", "ffn", "attention_and_ffn"):
        model = LlamaTransformer(config(scan_blocks=scan, parallel=ParallelConfig(remat=remat)))
        params = jax.eval_shape(model.init, jax.random.key(0), idx)["params"]
        forward = jax.make_jaxpr(lambda p, model=model: model.apply({"params": p}, idx))(params)
        wrapped[remat] = _checkpointed(forward.jaxpr)
    blocks = 1 if scan else 2  # the scan body holds one block; unrolled, each block has its own
    assert [len(wrapped[r]) for r in wrapped] == [0, blocks, blocks, blocks, 2 * blocks]
    # SwiGLU's silu is a logistic: the FFN is inside a remat exactly when it should be.
    has_ffn = lambda jaxprs: sorted("logistic" in _primitives(j) for j in jaxprs)  # noqa: E731
    assert has_ffn(wrapped["attention"]) == [False] * blocks
    assert has_ffn(wrapped["ffn"]) == [True] * blocks
    assert has_ffn(wrapped["full"]) == [True] * blocks
    assert has_ffn(wrapped["attention_and_ffn"]) == [False] * blocks + [True] * blocks


def test_sublayer_remat_changes_no_number():
    idx = jnp.arange(16, dtype=jnp.int32).reshape(2, 8) % 64
    results = {}
    for remat in ("none", "attention_and_ffn"):
        model = LlamaTransformer(config(parallel=ParallelConfig(remat=remat)))
        params = model.init(jax.random.key(0), idx)["params"]

        def loss(p, model=model):
            return jnp.mean(model.apply({"params": p}, idx) ** 2)

        results[remat] = jax.jit(jax.value_and_grad(loss))(params)
    (loss, grads), (remat_loss, remat_grads) = results["none"], results["attention_and_ffn"]
    np.testing.assert_allclose(remat_loss, loss, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), remat_grads, grads)


# --- Initialisation -------------------------------------------------------------------------


def _kernels(cfg: LlamaConfig) -> dict[str, np.ndarray]:
    idx = jnp.zeros((1, 4), jnp.int32)
    params = nn.meta.unbox(jax.jit(LlamaTransformer(cfg).init)(jax.random.key(0), idx)["params"])
    blocks = params["block_stack"]["blocks"]
    return {
        "embed": params["embed"]["embedding"],
        "query": blocks["attention"]["query"]["kernel"],
        "key": blocks["attention"]["key"]["kernel"],
        "value": blocks["attention"]["value"]["kernel"],
        "out": blocks["attention"]["out"]["kernel"],
        "gate": blocks["ffn"]["gate"]["kernel"],
        "up": blocks["ffn"]["up"]["kernel"],
        "down": blocks["ffn"]["down"]["kernel"],
        "lm_head": params["lm_head"]["kernel"],
    }


def test_small_wang_init_has_the_documented_standard_deviations():
    d, blocks = 64, 4
    cfg = config(vocab_size=512, embedding_dim=d, num_blocks=blocks, head_dim=16, init_scheme="small_wang")
    small, wang = small_init_std(d), wang_init_std(d, blocks)
    assert small == pytest.approx(np.sqrt(2 / (5 * d))) and wang == pytest.approx(1 / (blocks * np.sqrt(d)))
    expected = {name: small for name in ("embed", "query", "key", "value", "gate", "up", "lm_head")}
    expected |= {"out": wang, "down": wang}
    kernels = _kernels(cfg)
    for name, std in expected.items():
        values = np.asarray(kernels[name]).ravel()
        assert values.size >= 16384
        assert np.std(values) == pytest.approx(std, rel=0.04), name
        assert abs(np.mean(values)) < 0.05 * std, name
    # Control: the default scheme's output projections are drawn at 1/sqrt(fan_in), which the
    # same check tells apart from wang's.
    lecun = _kernels(config(vocab_size=512, embedding_dim=d, num_blocks=blocks, head_dim=16))
    assert np.std(np.asarray(lecun["out"])) == pytest.approx(1 / np.sqrt(d), rel=0.04)
    assert np.std(np.asarray(lecun["out"])) != pytest.approx(wang, rel=0.04)


def test_an_unknown_init_scheme_is_refused():
    with pytest.raises(ValueError, match="init_scheme='xavier' is not one of"):
        config(init_scheme="xavier")


# --- Intermediates --------------------------------------------------------------------------


def test_sown_intermediates_are_the_sublayer_outputs_statistics():
    cfg = config(scan_blocks=False, num_blocks=3)
    model = LlamaTransformer(cfg)
    idx = jax.random.randint(jax.random.key(2), (2, 8), 0, 64)
    variables = jax.jit(model.init)(jax.random.key(0), idx)
    assert variables.keys() == {"params"}  # init records nothing

    @jax.jit
    def sown_and_captured(variables):
        _, sown = model.apply(variables, idx, mutable=["intermediates"])
        # An independent reading: each module's output as flax captures it; a sub-layer's own
        # output is its module's output minus its input (the residual).
        _, captured = model.apply(variables, idx, capture_intermediates=True, mutable=["intermediates"])
        return per_block_intermediates(sown["intermediates"]), captured

    got, captured = sown_and_captured(variables)
    inter = captured["intermediates"]
    x = inter["embed"]["__call__"][0]
    expected = {}
    for i in range(3):
        block = inter["block_stack"][f"block_{i}"]
        after_attention, after_ffn = block["attention"]["__call__"][0], block["ffn"]["__call__"][0]
        for name, out in (("attn_out", after_attention - x), ("ffn_out", after_ffn - after_attention)):
            expected[f"block_{i}/{name}_std"] = np.std(out, axis=-1).mean()
            expected[f"block_{i}/{name}_abs_max"] = np.abs(out).max()
        x = after_ffn
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-4, err_msg=name)
    # Control: blocks differ, so a value filed under the wrong block would be noticed.
    assert not np.isclose(got["block_0/ffn_out_std"], got["block_1/ffn_out_std"], rtol=1e-3)


def test_scanned_intermediates_equal_unrolled_ones():
    idx = jax.random.randint(jax.random.key(2), (2, 8), 0, 64)
    values = {}
    for scan in (True, False):
        model = LlamaTransformer(config(scan_blocks=scan))
        if scan:
            params = scanned_params = jax.jit(model.init)(jax.random.key(0), idx)["params"]
        else:
            params = scanned_to_unrolled_params(scanned_params)

        @jax.jit
        def sown(params, model=model):
            _, variables = model.apply({"params": params}, idx, mutable=["intermediates"])
            return per_block_intermediates(variables["intermediates"])

        values[scan] = sown(params)
    assert values[True].keys() == values[False].keys() and len(values[True]) == 8
    for name in values[True]:
        np.testing.assert_allclose(values[True][name], values[False][name], rtol=1e-5, err_msg=name)


def test_precomputed_freqs_are_refused_by_the_block():
    from llama_fdl.model import TransformerBlock

    x_BSD = jnp.zeros((1, 4, 32))
    freqs = (jnp.zeros((1, 4, 4)), jnp.ones((1, 4, 4)))  # xlstm-jax's (sin, cos)
    with pytest.raises(ValueError, match="not xlstm-jax's precomputed"):
        TransformerBlock(config()).init(jax.random.key(0), x_BSD, freqs)


def test_a_normal_forward_pass_traces_nothing_for_the_intermediates(monkeypatch):
    model = LlamaTransformer(config())
    idx = jnp.zeros((2, 8), jnp.int32)
    params = jax.eval_shape(model.init, jax.random.key(0), idx)["params"]

    def traced(mutable):
        return str(jax.make_jaxpr(lambda p: model.apply({"params": p}, idx, mutable=mutable))(params))

    normal, recording = traced(False), traced(["intermediates"])
    monkeypatch.setattr(blocks, "_record", lambda *args: None)  # the model without the feature
    assert traced(False) == normal
    # Control: when recording, the statistics are computed, so the same comparison differs.
    assert traced(["intermediates"]) != recording
