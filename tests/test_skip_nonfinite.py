"""skip_nonfinite_steps skips a step whose *update* is non-finite, not only its loss or gradient.

One bad step is injected through the learning rate, an optimizer hyperparameter set to infinity
for step 2 only (and back to its value after it), so that step's loss and gradient are finite
while its update is not. Batches are random tokens (no data pipeline:
what is tested is the step). With skipping, that step must leave the
parameters and the optimizer state exactly as they were, and the steps after it must train.
Control: without skipping, the same step is flagged and its parameters are not finite, so the
injection really is a bad update (and a loop that ignored it would train on NaNs).
"""

import functools

import fiddle as fdl
import jax
import numpy as np
import optax
import pytest

import experiments
from llama_fdl.train import state as state_lib
from llama_fdl.train.step import train_step

BAD_STEP = 2  # the index of the step whose update gets an infinite learning rate
LEARNING_RATE = 3e-3


def _with_learning_rate(state, value):
    hyperparams = {
        **state.opt_state.hyperparams,
        "learning_rate": jax.numpy.asarray(value, jax.numpy.float32),
    }
    return state.replace(opt_state=state.opt_state._replace(hyperparams=hyperparams))


@pytest.fixture(scope="module")
def setup():
    exp = fdl.build(experiments.tiny())
    tx = optax.inject_hyperparams(optax.adamw)(learning_rate=LEARNING_RATE)
    initial, _ = state_lib.init_state(
        exp.model, tx, exp.data.sequence_length, exp.trainer.seed, exp.mesh, exp.model.config.parallel
    )
    rows, length = exp.data.batch_size, exp.data.sequence_length
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(6):
        tokens = rng.integers(3, 259, (rows, length + 1), dtype=np.int32)
        batches.append(
            {
                "decoder_input_tokens": tokens[:, :-1],
                "decoder_target_tokens": tokens[:, 1:],
                "decoder_loss_weights": np.ones((rows, length), np.int32),
                "decoder_segment_ids": np.ones((rows, length), np.int32),
                "decoder_positions": np.broadcast_to(np.arange(length, dtype=np.int32), (rows, length)),
            }
        )
    schedule = optax.constant_schedule(LEARNING_RATE)
    step = functools.partial(train_step, model=exp.model, tx=tx, schedule=schedule, mesh=exp.mesh)
    return initial, batches, step


def _run(setup, skip_nonfinite: bool):
    """states[i] is the state step i starts from (with the injected rate at BAD_STEP)."""
    initial, batches, step = setup
    step_fn = jax.jit(functools.partial(step, skip_nonfinite=skip_nonfinite))
    states, metrics = [initial], []
    for i, batch in enumerate(batches):
        if i == BAD_STEP:
            states[-1] = _with_learning_rate(states[-1], np.inf)
        state, m = step_fn(states[-1], batch)
        states.append(_with_learning_rate(state, LEARNING_RATE) if i == BAD_STEP else state)
        metrics.append(jax.device_get(m))
    return states, metrics


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_a_non_finite_update_is_skipped_and_training_goes_on(setup):
    states, metrics = _run(setup, skip_nonfinite=True)
    bad = BAD_STEP  # states[bad] is the state the bad step starts from
    assert np.isfinite(metrics[bad]["train/loss"]) and np.isfinite(metrics[bad]["opt/grad_norm"])
    assert metrics[bad]["train/nonfinite"] == 1.0
    assert [m["train/nonfinite"] for i, m in enumerate(metrics) if i != bad] == [0.0] * (len(metrics) - 1)
    # states[bad + 1] had its rate set back; compare what the step returned, before that.
    returned = _with_learning_rate(states[bad + 1], np.inf)
    kept, got = (states[bad].params, states[bad].opt_state), (returned.params, returned.opt_state)
    for before, after in zip(_leaves(kept), _leaves(got), strict=True):
        np.testing.assert_array_equal(after, before)
    # Skipped means unchanged, not frozen: each later step moves every parameter, finitely.
    for later in range(bad + 1, len(metrics)):
        pairs = zip(_leaves(states[later].params), _leaves(states[later + 1].params), strict=True)
        assert all(not np.array_equal(a, b) for a, b in pairs), f"step {later} left a parameter unchanged"
        assert all(np.isfinite(x).all() for x in _leaves(states[later + 1].params))


def test_control_without_skipping_the_update_spoils_the_parameters(setup):
    states, metrics = _run(setup, skip_nonfinite=False)
    assert metrics[BAD_STEP]["train/nonfinite"] == 1.0
    assert not all(np.isfinite(x).all() for x in _leaves(states[BAD_STEP + 1].params))
