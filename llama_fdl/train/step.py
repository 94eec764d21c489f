"""Pure train and eval steps: the loss, its gradient, the update, and per-step metrics.

Shapes: B = batch, L = sequence length, V = vocabulary, M = microbatches, K = rows per microbatch,
D = devices of the mesh.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from llama_fdl import sharding
from llama_fdl.model.blocks import INTERMEDIATES
from llama_fdl.model.config import ParallelConfig
from llama_fdl.model.stack import per_block_intermediates
from llama_fdl.train import preemption
from llama_fdl.train.state import TrainState

BATCH_FEATURES = (
    "decoder_input_tokens",
    "decoder_target_tokens",
    "decoder_loss_weights",
    "decoder_segment_ids",
    "decoder_positions",
)
"""What a batch holds, each [B, L] int32: seqio's packed decoder features (llama_fdl.data)."""


def _forward(
    model: nn.Module,
    params,
    batch: dict,
    train: bool,
    rng: jax.Array | None,
    with_intermediates: bool = False,
):
    """Logits, or (logits, the blocks' intermediates per block) with `with_intermediates`."""
    rngs = {"dropout": rng} if rng is not None else None
    out = model.apply(
        {"params": params},
        batch["decoder_input_tokens"],
        pos_idx=batch["decoder_positions"],
        segment_ids=batch["decoder_segment_ids"],
        train=train,
        rngs=rngs,
        mutable=[INTERMEDIATES] if with_intermediates else False,
    )
    if not with_intermediates:
        return out
    logits, variables = out
    return logits, per_block_intermediates(variables[INTERMEDIATES])


def _token_stats(logits_BLV: jax.Array, batch: dict) -> dict[str, jax.Array]:
    """Summed cross-entropy, correct predictions and weights, over non-padding tokens."""
    targets_BL = batch["decoder_target_tokens"]
    weights_BL = batch["decoder_loss_weights"].astype(jnp.float32)
    ce_BL = optax.softmax_cross_entropy_with_integer_labels(logits_BLV, targets_BL)
    # Correct when the target's logit is the largest. Unlike an argmax (a second pass over the
    # [B, L, V] logits, a quarter of the loss's cost at V=32000) this max is the one the
    # cross-entropy takes anyway, so XLA computes it once; a tie for the top counts as correct.
    target_logit_BL = jnp.take_along_axis(logits_BLV, targets_BL[..., None], axis=-1)[..., 0]
    correct_BL = (target_logit_BL >= jnp.max(logits_BLV, axis=-1)).astype(jnp.float32)
    return {
        "loss_sum": jnp.sum(ce_BL * weights_BL),
        "correct_sum": jnp.sum(correct_BL * weights_BL),
        "weight_sum": jnp.sum(weights_BL),
    }


def _summed_loss(params, batch: dict, rng: jax.Array, *, model: nn.Module, with_intermediates: bool = False):
    """Summed (not mean) cross-entropy, so microbatch gradients add up to the full batch's; the
    stats hold the blocks' intermediates under "intermediates" when asked for."""
    if not with_intermediates:
        stats = _token_stats(_forward(model, params, batch, train=True, rng=rng), batch)
        return stats["loss_sum"], stats
    logits, intermediates = _forward(model, params, batch, train=True, rng=rng, with_intermediates=True)
    stats = {**_token_stats(logits, batch), "intermediates": intermediates}
    return stats["loss_sum"], stats


def split_microbatches(batch: dict, num_microbatches: int, mesh: Mesh, parallel: ParallelConfig) -> dict:
    """[B, ...] -> [k, B/k, ...] where microbatch i holds global rows i, i + k, i + 2k, ...

    Rows are split over data x fsdp in contiguous blocks, so taking every k-th row gives every
    device an equal share of each microbatch from the rows it already holds: no data moves.
    """
    rows = sharding.batch_sharding(mesh, parallel).spec[0]
    spec = NamedSharding(mesh, PartitionSpec(None, rows))

    def split(x_B):
        x_KM = x_B.reshape(x_B.shape[0] // num_microbatches, num_microbatches, *x_B.shape[1:])
        return jax.lax.with_sharding_constraint(jnp.swapaxes(x_KM, 0, 1), spec)

    return {k: split(v) for k, v in batch.items()}


def loss_and_grads(
    params,
    batch: dict,
    rng: jax.Array,
    *,
    model: nn.Module,
    mesh: Mesh,
    num_microbatches: int = 1,
    gather_once: bool = True,
    with_intermediates: bool = False,
) -> tuple[jax.Array, dict[str, jax.Array], Any]:
    """Mean loss over non-padding tokens, the summed token stats and the gradient of the mean.

    With `num_microbatches` k > 1 the batch is cut into k microbatches that run one after the
    other under `jax.lax.scan`, accumulating summed gradients; dividing by the total weight at
    the end gives the gradient of the whole batch's mean. FSDP-sharded parameters are gathered
    once, before the scan, instead of once per microbatch (`gather_once=False` leaves them to
    be gathered inside every microbatch, which holds less in memory but moves k times the bytes);
    each microbatch's gradient is reduce-scattered back into the parameters' own layout, so the
    accumulator stays sharded. With `with_intermediates` the stats also hold the blocks'
    intermediates (`per_block_intermediates`), averaged over the microbatches.
    """
    parallel = model.config.parallel
    loss_fn = functools.partial(_summed_loss, model=model, with_intermediates=with_intermediates)
    grad_fn = jax.grad(loss_fn, has_aux=True)
    with sharding.logical_axis_scope(mesh, parallel):
        if num_microbatches == 1:
            grads, stats = grad_fn(params, batch, rng)
        else:
            grads, stats = _accumulate(
                grad_fn, params, batch, rng, model, mesh, num_microbatches, gather_once
            )
    weight = jnp.maximum(stats["weight_sum"], 1.0)
    grads = jax.tree.map(lambda g: g / weight, grads)
    return stats["loss_sum"] / weight, stats, grads


def _accumulate(
    grad_fn, params, batch: dict, rng, model, mesh: Mesh, num_microbatches: int, gather_once: bool
):
    """Summed gradients and stats over microbatches (see `loss_and_grads`)."""
    parallel = model.config.parallel
    boxed = jax.eval_shape(model.init, jax.random.key(0), batch["decoder_input_tokens"][:1])["params"]
    own = sharding.shardings_of(boxed, mesh, parallel)
    if gather_once:
        gathered = sharding.shardings_of(boxed, mesh, parallel, gather_fsdp=True)
        params = jax.lax.with_sharding_constraint(params, gathered)
    microbatches = split_microbatches(batch, num_microbatches, mesh, parallel)

    def body(carry, inputs):
        grads_sum, stats_sum = carry
        microbatch, index = inputs
        grads, stats = grad_fn(params, microbatch, jax.random.fold_in(rng, index))
        grads = jax.lax.with_sharding_constraint(grads, own)
        return (jax.tree.map(jnp.add, grads_sum, grads), jax.tree.map(jnp.add, stats_sum, stats)), None

    zeros = jax.lax.with_sharding_constraint(jax.tree.map(jnp.zeros_like, params), own)
    first = jax.tree.map(lambda x: x[0], microbatches)
    zero_stats = jax.tree.map(
        lambda x: jnp.zeros(x.shape, x.dtype), jax.eval_shape(grad_fn, params, first, rng)[1]
    )
    (grads, stats), _ = jax.lax.scan(body, (zeros, zero_stats), (microbatches, jnp.arange(num_microbatches)))
    if "intermediates" in stats:  # statistics of each microbatch, not sums over the batch
        stats["intermediates"] = jax.tree.map(lambda x: x / num_microbatches, stats["intermediates"])
    return grads, stats


def train_step(
    state: TrainState,
    batch: dict,
    stop_D: jax.Array | None = None,
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    schedule,
    mesh: Mesh,
    num_microbatches: int = 1,
    skip_nonfinite: bool = False,
    with_intermediates: bool = False,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on `batch`; returns the new state and scalar metrics.

    `mesh` is where activations are laid out (by the model's logical constraints);
    `num_microbatches` splits the batch for gradient accumulation (see `loss_and_grads`).
    `stop_D` holds each device's process's stop signal (see `llama_fdl.train.preemption`); the
    metric `stop/signal` is their maximum, the same on every process.
    A step is non-finite when its loss, its gradient, or what the update made of the parameters
    and optimizer state holds a NaN/Inf (an infinite learning rate spoils the update even when
    the gradient is fine). With `skip_nonfinite`, such a step leaves params and optimizer state
    unchanged (the step counter still advances, so the data moves on).
    With `with_intermediates` the metrics also hold "intermediates/block_{i}/NAME" (xlstm-jax's
    attn_out_std, attn_out_abs_max, ffn_out_std, ffn_out_abs_max of every block).
    """
    step_rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    loss, stats, grads = loss_and_grads(
        state.params,
        batch,
        step_rng,
        model=model,
        mesh=mesh,
        num_microbatches=num_microbatches,
        with_intermediates=with_intermediates,
    )
    intermediates = stats.pop("intermediates", {})
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & _all_finite((params, opt_state))
    if skip_nonfinite:
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
        params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
    segment_ids_BL = batch["decoder_segment_ids"]
    metrics = {
        "train/loss": loss,
        "train/accuracy": stats["correct_sum"] / jnp.maximum(stats["weight_sum"], 1.0),
        "train/tokens": stats["weight_sum"],
        "opt/learning_rate": schedule(state.step),
        "opt/grad_norm": grad_norm,
        "opt/update_norm": optax.tree.norm(updates),
        "opt/param_norm": optax.tree.norm(params),
        "data/padding_fraction": 1.0 - jnp.mean(batch["decoder_loss_weights"].astype(jnp.float32)),
        # Packed segments are numbered 1..n in each row, so the row maximum counts documents.
        "data/documents_per_batch": jnp.sum(jnp.max(segment_ids_BL, axis=-1)).astype(jnp.float32),
        "train/nonfinite": 1.0 - finite.astype(jnp.float32),
        **{f"intermediates/{name}": value for name, value in intermediates.items()},
    }
    if stop_D is not None:
        metrics["stop/signal"] = jnp.max(stop_D).astype(jnp.float32)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, metrics


def jit_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    schedule,
    mesh: Mesh,
    state_shardings,
    *,
    num_microbatches: int = 1,
    skip_nonfinite: bool = False,
    with_intermediates: bool = False,
):
    """`train_step` jitted as the loop runs it: laid out by the state's and batch's shardings,
    with every device's stop flag (`StopRequest.flags`, so all processes agree on a stop),
    metrics replicated, and the input state donated (its buffers become the new state's).

    The one place that decides how the step is compiled, so the loop, `--dry_run` and the
    benchmarks all compile the same program.
    """
    return jax.jit(
        functools.partial(
            train_step,
            model=model,
            tx=tx,
            schedule=schedule,
            mesh=mesh,
            num_microbatches=num_microbatches,
            skip_nonfinite=skip_nonfinite,
            with_intermediates=with_intermediates,
        ),
        in_shardings=(
            state_shardings,
            sharding.batch_sharding(mesh, model.config.parallel),
            preemption.flag_sharding(mesh),
        ),
        out_shardings=(state_shardings, sharding.replicated(mesh)),
        donate_argnums=0,
    )


def _all_finite(tree) -> jax.Array:
    """True when no floating-point leaf of `tree` holds a NaN or Inf.

    Checked leaf by leaf rather than through a norm, which overflows to Inf for finite values
    above ~1e19 and would call a merely large update non-finite.
    """
    floats = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    leaves = [jnp.all(jnp.isfinite(x)) for x in floats]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def eval_step(
    params, batch: dict, *, model: nn.Module, mesh: Mesh, byte_lengths_V: jax.Array | None = None
) -> dict[str, jax.Array]:
    """Summed statistics of one eval batch (dropout off), to be added up over the eval set.

    With `byte_lengths_V` (how many UTF-8 bytes each token id decodes to) also the bytes the
    target tokens decode to, the denominator of bits per byte.
    """
    with sharding.logical_axis_scope(mesh, model.config.parallel):
        logits_BLV = _forward(model, params, batch, train=False, rng=None)
    stats = _token_stats(logits_BLV, batch)
    if byte_lengths_V is not None:
        weights_BL = batch["decoder_loss_weights"].astype(jnp.float32)
        bytes_BL = jnp.take(byte_lengths_V, batch["decoder_target_tokens"]).astype(jnp.float32)
        stats["byte_sum"] = jnp.sum(bytes_BL * weights_BL)
    return stats
