"""Optimizer factories over optax."""

from __future__ import annotations

import jax
import optax

_DECAYED = ("kernel", "embedding")


def _decay_mask(params):
    """True for matrices (kernels, embeddings); norms' scales and biases are not decayed.

    Decided by name, not rank, because scanned blocks stack a layer axis onto every parameter.
    """

    def decayed(path, _) -> bool:
        # The last dict key names the parameter; logical-axis boxes add attribute keys after it.
        names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
        return bool(names) and names[-1] in _DECAYED

    return jax.tree_util.tree_map_with_path(decayed, params)


def warmup_cosine(
    peak_learning_rate: float, warmup_steps: int, total_steps: int, final_fraction: float
) -> optax.Schedule:
    """Linear warmup from 0 to the peak, then cosine decay to `final_fraction` of it."""
    if total_steps <= warmup_steps:
        raise ValueError(
            f"The run has {total_steps} steps but warmup takes {warmup_steps}; "
            f"lower optimizer.warmup_steps below trainer.num_train_steps (for a short trial, add "
            f"--fdl.optimizer.warmup_steps={max(total_steps // 10, 1)})."
        )
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=peak_learning_rate,
        warmup_steps=warmup_steps,
        decay_steps=total_steps,
        end_value=peak_learning_rate * final_fraction,
    )


def adamw(
    total_steps: int,
    *,
    peak_learning_rate: float = 3e-3,
    warmup_steps: int = 100,
    final_fraction: float = 0.1,
    b1: float = 0.9,
    b2: float = 0.95,
    eps: float = 1e-8,
    weight_decay: float = 0.1,
    clip_norm: float = 1.0,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW with global-norm clipping and a warmup + cosine schedule.

    Args:
      total_steps: length of the run; the trainer passes its own step count, so it has one home.
      peak_learning_rate: learning rate at the end of warmup.
      warmup_steps: steps of linear warmup from zero.
      final_fraction: the learning rate at the last step, as a fraction of the peak.
      b1, b2, eps: Adam moments and epsilon.
      weight_decay: decoupled weight decay, applied to matrices only (not norms or biases).
      clip_norm: global gradient norm above which gradients are scaled down.
    """
    schedule = warmup_cosine(peak_learning_rate, warmup_steps, total_steps, final_fraction)
    tx = optax.chain(
        optax.clip_by_global_norm(clip_norm),
        optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=_decay_mask),
    )
    return tx, schedule
