"""Generation with the KV cache: prefill a batch of prompts, then sample one token at a time.

Prompts of different lengths are left-padded to a common length P: every row's last prompt token
sits in slot P - 1, so all rows write the same cache slot at every step. Padding carries segment
id 0 (never attended to) and rotary positions count real tokens only, so a padded row computes
exactly what it would alone. Each new token is sampled from the previous step's logits
(greedy at temperature 0; otherwise temperature, then top-k, then top-p, as in HF `generate`),
with an rng folded by step; a row stops at `eos_id` and is padded with `pad_id` after it.

Shape legend: B batch, P prompt slots, N new tokens, T = P + N cache slots, V vocab_size.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import struct


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
    """How tokens are chosen and when a row stops."""

    max_new_tokens: int = 128
    """Tokens generated per row at most (fewer where EOS comes first)."""
    temperature: float = 1.0
    """Logits are divided by this before sampling; 0 picks the most likely token (greedy)."""
    top_k: int | None = None
    """Sample only among the k most likely tokens; None: all."""
    top_p: float | None = None
    """Sample only among the most likely tokens whose probabilities add up to p; None: all."""
    eos_id: int | None = None
    """A row stops after generating this token; None: rows run to max_new_tokens."""
    pad_id: int = 0
    """Fills a row's tokens after its EOS, and its left padding."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be at least 1.")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0 (0 is greedy).")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k={self.top_k} must be at least 1, or None for no limit.")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1], or None for no limit.")


@struct.dataclass
class Generation:
    """What `Sampler` returns (device arrays)."""

    tokens: jax.Array
    """[B, N] generated ids; pad_id after a row's EOS."""
    lengths: jax.Array
    """[B] tokens generated per row, its EOS included."""
    logits: jax.Array | None
    """[B, N, V] the float32 logits each token was chosen from, when asked for."""


def left_pad(
    prompts: Sequence[Sequence[int]], pad_id: int = 0, multiple_of: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Token ids [B, P] and segment ids [B, P] (1 for prompt tokens, 0 for padding), with P the
    longest prompt rounded up to `multiple_of` (fewer distinct shapes, fewer compilations)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("Every prompt needs at least one token.")
    width = -(-max(len(p) for p in prompts) // multiple_of) * multiple_of
    tokens_BP = np.full((len(prompts), width), pad_id, np.int32)
    segment_ids_BP = np.zeros((len(prompts), width), np.int32)
    for row, prompt in enumerate(prompts):
        tokens_BP[row, width - len(prompt) :] = prompt
        segment_ids_BP[row, width - len(prompt) :] = 1
    return tokens_BP, segment_ids_BP


def filter_logits(logits_BV: jax.Array, top_k: int | None, top_p: float | None) -> jax.Array:
    """Logits with everything outside the top k, then outside the top-p nucleus, set to -inf."""
    if top_k is not None and top_k < logits_BV.shape[-1]:
        kth_B1 = jax.lax.top_k(logits_BV, top_k)[0][:, -1:]
        logits_BV = jnp.where(logits_BV < kth_B1, -jnp.inf, logits_BV)
    if top_p is not None and top_p < 1.0:
        sorted_BV = jnp.sort(logits_BV, axis=-1)[:, ::-1]
        probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
        # Keep a token if the tokens before it hold less than top_p: the most likely always stays.
        before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
        kept_BV = jnp.where(before_BV < top_p, sorted_BV, jnp.inf)
        threshold_B1 = jnp.min(kept_BV, axis=-1, keepdims=True)
        logits_BV = jnp.where(logits_BV < threshold_B1, -jnp.inf, logits_BV)
    return logits_BV


def choose(logits_BV: jax.Array, rng: jax.Array, options: SamplingOptions) -> jax.Array:
    """One token id per row, [B] int32."""
    if options.temperature == 0:
        return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    logits_BV = filter_logits(logits_BV / options.temperature, options.top_k, options.top_p)
    return jax.random.categorical(rng, logits_BV, axis=-1).astype(jnp.int32)


class Sampler:
    """Compiled generation for one model and one set of options (compiles once per prompt shape)."""

    def __init__(self, model: nn.Module, options: SamplingOptions, *, return_logits: bool = False):
        self.model, self.options = model, options
        self._generate = jax.jit(
            functools.partial(_generate, model=model, options=options, return_logits=return_logits)
        )

    def __call__(
        self,
        params,
        prompt_BP: jax.Array,
        segment_ids_BP: jax.Array,
        rng: jax.Array,
        positions_BP: jax.Array | None = None,
    ) -> Generation:
        """Continues left-padded prompts (see `left_pad`).

        Args:
          params: the model's parameters.
          prompt_BP: token ids, left-padded.
          segment_ids_BP: 0 on padding, else the document each token is in; generated tokens
            continue the last one's.
          rng: a jax PRNG key (unused when greedy).
          positions_BP: rotary positions; default: 0, 1, ... over each row's real tokens.
        """
        segment_ids_BP = jnp.asarray(segment_ids_BP, jnp.int32)
        if positions_BP is None:
            positions_BP = jnp.maximum(jnp.cumsum(segment_ids_BP != 0, axis=1) - 1, 0)
        return self._generate(params, jnp.asarray(prompt_BP, jnp.int32), segment_ids_BP, positions_BP, rng)


def empty_cache(model: nn.Module, batch: int, slots: int):
    """A zero "cache" collection of `slots` positions per row, shaped by Flax's init pass."""
    shapes = jax.eval_shape(
        functools.partial(model.init, decode=True), jax.random.key(0), jnp.zeros((batch, slots), jnp.int32)
    )["cache"]
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def _generate(params, prompt_BP, segment_ids_BP, positions_BP, rng, *, model, options, return_logits):
    batch, prompt_len = prompt_BP.shape
    steps = options.max_new_tokens

    def forward(cache, tokens_BS, positions_BS, segments_BS):
        logits_BSV, variables = model.apply(
            {"params": params, "cache": cache},
            tokens_BS,
            pos_idx=positions_BS,
            segment_ids=segments_BS,
            decode=True,
            mutable=["cache"],
        )
        return logits_BSV[:, -1], variables["cache"]

    # The last generated token is never fed back, so P + N - 1 slots would do; one more keeps
    # the shapes simple.
    cache = empty_cache(model, batch, prompt_len + steps)
    logits_BV, cache = forward(cache, prompt_BP, positions_BP, segment_ids_BP)
    next_position_B, segment_B = positions_BP[:, -1] + 1, segment_ids_BP[:, -1]

    def emit(state, step, logits_BV):
        """Chooses token `step` from `logits_BV` and records it."""
        tokens_BN, lengths_B, done_B, all_logits = state
        token_B = jnp.where(done_B, options.pad_id, choose(logits_BV, jax.random.fold_in(rng, step), options))
        tokens_BN = tokens_BN.at[:, step].set(token_B)
        lengths_B = lengths_B + (~done_B).astype(jnp.int32)
        if options.eos_id is not None:
            done_B = done_B | (token_B == options.eos_id)
        if all_logits is not None:
            all_logits = all_logits.at[:, step].set(logits_BV)
        return tokens_BN, lengths_B, done_B, all_logits

    vocab = logits_BV.shape[-1]
    state = (
        jnp.full((batch, steps), options.pad_id, jnp.int32),
        jnp.zeros((batch,), jnp.int32),
        jnp.zeros((batch,), bool),
        jnp.zeros((batch, steps, vocab), jnp.float32) if return_logits else None,
    )
    state = emit(state, 0, logits_BV)

    def cond(carry):
        step, _, (_, _, done_B, _) = carry
        return (step < steps) & ~jnp.all(done_B)

    def body(carry):
        step, cache, state = carry
        fed_B1 = state[0][:, step - 1, None]
        logits_BV, cache = forward(cache, fed_B1, (next_position_B + step - 1)[:, None], segment_B[:, None])
        return step + 1, cache, emit(state, step, logits_BV)

    _, _, (tokens_BN, lengths_B, _, all_logits) = jax.lax.while_loop(cond, body, (1, cache, state))
    return Generation(tokens=tokens_BN, lengths=lengths_B, logits=all_logits)
