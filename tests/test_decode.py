"""KV-cache decoding equals the full forward pass; sampling picks tokens the way it says.

The equality: prompts of different lengths are left-padded, prefilled and continued token by
token; the logits each token was sampled from must equal a full-sequence forward of that row's
own tokens alone (float32, matmuls at "highest" precision so that GPUs with TF32 agree too).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from llama_fdl.model import LlamaConfig, LlamaTransformer, RopeScaling
from llama_fdl.model.sampling import Sampler, SamplingOptions, filter_logits, left_pad

# Fixed in advance: two float32 computations of the same logits, and the smallest difference a
# control must show to count as different.
SAME_ATOL = 1e-5
DIFFERENT = 1e-3
NEW_TOKENS = 5

ALL_FEATURES = {
    "qk_norm": True,
    "num_kv_heads": 2,
    "logits_soft_cap": 3.0,
    "mask_across_document_boundaries": True,
    "norm_eps": 1e-5,
    "qkv_bias": True,
    "rope_scaling": RopeScaling(factor=4.0, original_max_position_embeddings=16),
}


@pytest.fixture(autouse=True)
def highest_precision():
    with jax.default_matmul_precision("highest"):
        yield


def tiny(**overrides) -> LlamaConfig:
    return LlamaConfig(**{"vocab_size": 64, "embedding_dim": 32, "num_blocks": 2, "head_dim": 8, **overrides})


SCANNED = tiny(**ALL_FEATURES)
UNROLLED = tiny(scan_blocks=False, **ALL_FEATURES)


def by_repr(fn):
    """functools.cache keyed by repr: LlamaConfig is a mutable dataclass, so not hashable."""
    memo = {}

    def cached(*args, **kwargs):
        key = repr((args, sorted(kwargs.items())))
        if key not in memo:
            memo[key] = fn(*args, **kwargs)
        return memo[key]

    return cached


@by_repr
def random_params(config: LlamaConfig):
    """Every parameter random, norm scales and biases included (init leaves them 1 and 0).

    Drawn with NumPy into the shapes of an abstract init: compiling flax's initialisers costs
    seconds on CPU, and nothing here depends on their distributions.
    """
    model = LlamaTransformer(config)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"]
    rng = np.random.RandomState(0)

    def draw(path, shape):
        noise = rng.standard_normal(shape.shape).astype(np.float32)
        return jnp.asarray(1.0 + 0.2 * noise if path[-1].key == "scale" else 0.2 * noise)

    return jax.tree_util.tree_map_with_path(draw, nn.meta.unbox(shapes))


@by_repr
def sampler(config: LlamaConfig, options: SamplingOptions, return_logits: bool = True) -> Sampler:
    """One compiled sampler per (config, options), shared by the tests."""
    return Sampler(LlamaTransformer(config), options, return_logits=return_logits)


@by_repr
def forward(config: LlamaConfig):
    return jax.jit(
        lambda p, i, pos, seg: LlamaTransformer(config).apply({"params": p}, i, pos, segment_ids=seg)
    )


SAMPLE = SamplingOptions(NEW_TOKENS, temperature=1.0)
GREEDY = SamplingOptions(NEW_TOKENS, temperature=0.0)


# Row 0 holds two documents (segments 1 and 2) whose positions restart, as packed training
# batches have them; rows 1 and 2 are shorter single documents, so they are left-padded.
PROMPTS = [[5, 9, 17, 3, 40, 41, 42], [7, 8], [11, 12, 13, 14]]
ROW0_SEGMENTS = [1, 1, 1, 2, 2, 2, 2]
ROW0_POSITIONS = [0, 1, 2, 0, 1, 2, 3]


def prompt_inputs():
    tokens, segments = left_pad(PROMPTS)
    positions = np.maximum(np.cumsum(segments != 0, axis=1) - 1, 0)
    segments[0], positions[0] = ROW0_SEGMENTS, ROW0_POSITIONS
    return tokens, segments, positions


def full_forward_reference(config, params, generated_BN):
    """Logits that chose each generated token, from one full forward of each row's own tokens
    (right-padded into one batch: causal attention never looks right)."""
    rows = [list(p) + list(g) for p, g in zip(PROMPTS, np.asarray(generated_BN), strict=True)]
    width = max(len(r) for r in rows)
    idx = np.zeros((len(rows), width), np.int32)
    segments = np.zeros((len(rows), width), np.int32)
    positions = np.zeros((len(rows), width), np.int32)
    for i, row in enumerate(rows):
        idx[i, : len(row)] = row
        seg = (ROW0_SEGMENTS + [2] * NEW_TOKENS) if i == 0 else [1] * len(row)
        pos = (ROW0_POSITIONS + list(range(4, 4 + NEW_TOKENS))) if i == 0 else list(range(len(row)))
        segments[i, : len(row)], positions[i, : len(row)] = seg, pos
    logits = np.asarray(forward(config)(params, idx, positions, segments))
    return np.stack([logits[i, len(p) - 1 : len(p) - 1 + NEW_TOKENS] for i, p in enumerate(PROMPTS)])


@pytest.mark.parametrize("config", [SCANNED, UNROLLED], ids=["scanned", "unrolled"])
def test_cached_decoding_equals_the_full_forward(config):
    # With qk_norm, grouped-query attention, a soft cap, document masking (row 0's prompt holds
    # two documents), q/k/v biases, norm_eps and rope scaling all on.
    params = random_params(config)
    tokens, segments, positions = prompt_inputs()
    out = sampler(config, SAMPLE)(params, tokens, segments, jax.random.PRNGKey(3), positions)
    assert out.tokens.shape == (3, NEW_TOKENS) and np.all(np.asarray(out.lengths) == NEW_TOKENS)
    expected = full_forward_reference(config, params, out.tokens)
    np.testing.assert_allclose(np.asarray(out.logits), expected, atol=SAME_ATOL, rtol=0)


def test_the_equality_notices_padding_that_leaks_into_attention():
    # Control: decoding the same prompts with the left padding marked as real tokens (segment 1,
    # positions counting it) changes the padded rows' logits well beyond the tolerance.
    params = random_params(SCANNED)
    tokens, _, _ = prompt_inputs()
    leaky = sampler(SCANNED, SAMPLE)(params, tokens, np.ones_like(tokens), jax.random.PRNGKey(3))
    expected = full_forward_reference(SCANNED, params, leaky.tokens)
    padded_rows = [1, 2]
    assert np.abs(np.asarray(leaky.logits)[padded_rows] - expected[padded_rows]).max() > DIFFERENT


def test_greedy_is_argmax_and_does_not_depend_on_the_rng():
    params = random_params(SCANNED)
    tokens, segments, positions = prompt_inputs()
    a = sampler(SCANNED, GREEDY)(params, tokens, segments, jax.random.PRNGKey(0), positions)
    b = sampler(SCANNED, GREEDY)(params, tokens, segments, jax.random.PRNGKey(1), positions)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.tokens, np.argmax(np.asarray(a.logits), axis=-1))
    # Sampling at temperature 1 depends on the rng (control for the comparison above).
    c = sampler(SCANNED, SAMPLE)(params, tokens, segments, jax.random.PRNGKey(0), positions)
    d = sampler(SCANNED, SAMPLE)(params, tokens, segments, jax.random.PRNGKey(1), positions)
    assert np.any(np.asarray(c.tokens) != np.asarray(d.tokens))


def test_a_row_stops_at_eos_and_is_padded_after_it():
    params = random_params(SCANNED)
    tokens, segments, positions = prompt_inputs()
    run = np.asarray(
        sampler(SCANNED, GREEDY)(params, tokens, segments, jax.random.PRNGKey(0), positions).tokens
    )
    eos = int(run[1, 2])  # row 1's third greedy token becomes the stop token
    options = SamplingOptions(NEW_TOKENS, temperature=0.0, eos_id=eos, pad_id=63)
    out = sampler(SCANNED, options, return_logits=False)(
        params, tokens, segments, jax.random.PRNGKey(0), positions
    )
    got, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    for row in range(3):
        hits = np.flatnonzero(run[row] == eos)
        stop = hits[0] + 1 if hits.size else NEW_TOKENS
        assert lengths[row] == stop
        np.testing.assert_array_equal(got[row, :stop], run[row, :stop])
        assert np.all(got[row, stop:] == 63)
    assert lengths[1] <= 3


def test_top_k_and_top_p_keep_exactly_the_tokens_they_say():
    probs = np.array([[0.5, 0.2, 0.15, 0.1, 0.05]])
    logits = jnp.log(jnp.asarray(probs))
    kept = lambda **kw: np.isfinite(np.asarray(filter_logits(logits, **kw)))[0].tolist()  # noqa: E731
    assert kept(top_k=2, top_p=None) == [True, True, False, False, False]
    # 0.5 + 0.2 = 0.7 < 0.8, so the third token is still needed to reach 0.8.
    assert kept(top_k=None, top_p=0.8) == [True, True, True, False, False]
    assert kept(top_k=None, top_p=0.7) == [True, True, False, False, False]
    assert kept(top_k=None, top_p=0.1) == [True, False, False, False, False]
    assert kept(top_k=2, top_p=0.99) == [True, True, False, False, False]
    assert kept(top_k=None, top_p=None) == [True] * 5


def test_sampled_frequencies_follow_the_filtered_distribution():
    # 20,000 draws: the standard error of a frequency is at most 0.0036, so 0.02 is > 5 sigma.
    probs = np.array([0.4, 0.3, 0.2, 0.1])
    logits = jnp.log(jnp.broadcast_to(jnp.asarray(probs), (20_000, 4)))
    draws = jax.random.categorical(jax.random.PRNGKey(0), filter_logits(logits / 1.0, 3, None))
    freq = np.bincount(np.asarray(draws), minlength=4) / 20_000
    np.testing.assert_allclose(freq, [0.4 / 0.9, 0.3 / 0.9, 0.2 / 0.9, 0.0], atol=0.02)
    # Temperature 0.5 squares the probabilities before renormalising.
    hot = jax.random.categorical(jax.random.PRNGKey(1), logits / 0.5)
    sq = probs**2 / np.sum(probs**2)
    np.testing.assert_allclose(np.bincount(np.asarray(hot), minlength=4) / 20_000, sq, atol=0.02)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_new_tokens": 0}, "max_new_tokens=0"),
        ({"temperature": -1.0}, "temperature=-1.0"),
        ({"top_k": 0}, "top_k=0"),
        ({"top_p": 1.5}, "top_p=1.5"),
    ],
)
def test_bad_sampling_options_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingOptions(**kwargs)


def test_decoding_a_bidirectional_model_or_with_borders_is_refused():
    with pytest.raises(ValueError, match="causal=False"):
        LlamaTransformer(tiny(causal=False)).init(
            jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32), decode=True
        )
    borders = jnp.zeros((1, 4), bool)
    with pytest.raises(ValueError, match="document_borders"):
        LlamaTransformer(tiny()).init(
            jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32), document_borders=borders, decode=True
        )


def test_left_padding_puts_every_prompt_at_the_right_edge():
    tokens, segments = left_pad([[5, 6, 7], [8]], pad_id=9, multiple_of=4)
    np.testing.assert_array_equal(tokens, [[9, 5, 6, 7], [9, 9, 9, 8]])
    np.testing.assert_array_equal(segments, [[0, 1, 1, 1], [0, 0, 0, 1]])
    with pytest.raises(ValueError, match="at least one token"):
        left_pad([[1, 2], []])
