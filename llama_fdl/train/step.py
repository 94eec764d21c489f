"""Pure train and eval steps: the loss, its gradient, the update, and per-step metrics.

Shapes: B = batch, L = sequence length, V = vocabulary.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from llama_fdl.train.state import TrainState


def _forward(model: nn.Module, params, batch: dict, train: bool, rng: jax.Array | None):
    rngs = {"dropout": rng} if rng is not None else None
    return model.apply(
        {"params": params},
        batch["decoder_input_tokens"],
        pos_idx=batch["decoder_positions"],
        segment_ids=batch["decoder_segment_ids"],
        train=train,
        rngs=rngs,
    )


def _token_stats(logits_BLV: jax.Array, batch: dict) -> dict[str, jax.Array]:
    """Summed cross-entropy, correct predictions and weights, over non-padding tokens."""
    targets_BL = batch["decoder_target_tokens"]
    weights_BL = batch["decoder_loss_weights"].astype(jnp.float32)
    ce_BL = optax.softmax_cross_entropy_with_integer_labels(logits_BLV, targets_BL)
    correct_BL = (jnp.argmax(logits_BLV, axis=-1) == targets_BL).astype(jnp.float32)
    return {
        "loss_sum": jnp.sum(ce_BL * weights_BL),
        "correct_sum": jnp.sum(correct_BL * weights_BL),
        "weight_sum": jnp.sum(weights_BL),
    }


def train_step(
    state: TrainState,
    batch: dict,
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    schedule,
    skip_nonfinite: bool = False,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on `batch`; returns the new state and scalar metrics.

    With `skip_nonfinite`, a step whose loss or gradient is NaN/Inf leaves params and optimizer
    state unchanged (the step counter still advances, so the data moves on).
    """
    step_rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

    def loss_fn(params):
        logits_BLV = _forward(model, params, batch, train=True, rng=step_rng)
        stats = _token_stats(logits_BLV, batch)
        return stats["loss_sum"] / jnp.maximum(stats["weight_sum"], 1.0), stats

    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
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
        "opt/update_norm": optax.global_norm(updates),
        "opt/param_norm": optax.global_norm(params),
        "data/padding_fraction": 1.0 - jnp.mean(batch["decoder_loss_weights"].astype(jnp.float32)),
        # Packed segments are numbered 1..n in each row, so the row maximum counts documents.
        "data/documents_per_batch": jnp.sum(jnp.max(segment_ids_BL, axis=-1)).astype(jnp.float32),
        "train/nonfinite": 1.0 - finite.astype(jnp.float32),
    }
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, metrics


def eval_step(params, batch: dict, *, model: nn.Module) -> dict[str, jax.Array]:
    """Summed statistics of one eval batch (dropout off), to be added up over the eval set."""
    logits_BLV = _forward(model, params, batch, train=False, rng=None)
    return _token_stats(logits_BLV, batch)
