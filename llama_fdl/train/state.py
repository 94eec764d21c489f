"""The train state and its sharded initialisation.

Parameters are laid out on the mesh before anything is allocated: `jax.eval_shape` gives the
abstract, logically annotated state; the rules table turns annotations into shardings; the real
initialiser is then jitted with those shardings as outputs.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from flax import struct
from jax.sharding import Mesh

from llama_fdl import sharding
from llama_fdl.model.config import ParallelConfig


@struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


def _init_fn(model: nn.Module, tx: optax.GradientTransformation, seq_len: int, seed: int):
    def init() -> TrainState:
        init_rng, _ = jax.random.split(jax.random.key(seed))
        tokens_BL = jnp.zeros((1, seq_len), jnp.int32)
        variables = model.init({"params": init_rng, "dropout": init_rng}, tokens_BL)
        return _fresh_state(variables["params"], tx, seed)

    return init


def _fresh_state(params, tx: optax.GradientTransformation, seed: int) -> TrainState:
    """Step 0, a new optimizer state and the seed's train rng around `params`."""
    _, train_rng = jax.random.split(jax.random.key(seed))
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        rng=jax.random.key_data(train_rng),
    )


def abstract_state(model: nn.Module, tx, seq_len: int, seed: int) -> TrainState:
    """The state's shapes and dtypes, with logical-axis boxes still on the parameters."""
    return jax.eval_shape(_init_fn(model, tx, seq_len, seed))


def state_shardings(abstract: TrainState, mesh: Mesh, parallel: ParallelConfig) -> TrainState:
    """NamedShardings for every leaf; optimizer moments follow their parameters."""
    return sharding.shardings_of(abstract, mesh, parallel)


def init_state(
    model: nn.Module, tx, seq_len: int, seed: int, mesh: Mesh, parallel: ParallelConfig
) -> tuple[TrainState, TrainState]:
    """A freshly initialised state, created directly in its sharded layout, and its shardings."""
    boxed = abstract_state(model, tx, seq_len, seed)
    shardings = state_shardings(boxed, mesh, parallel)
    init = jax.jit(lambda: nn.meta.unbox(_init_fn(model, tx, seq_len, seed)()), out_shardings=shardings)
    return init(), shardings


def state_from_params(params, tx, seed: int, shardings: TrainState) -> TrainState:
    """A fresh state around given parameters (trainer.init_from), laid out by `shardings`."""
    build = jax.jit(
        lambda p: _fresh_state(p, tx, seed), in_shardings=(shardings.params,), out_shardings=shardings
    )
    return build(params)


def unboxed_abstract(boxed: TrainState, shardings: TrainState) -> TrainState:
    """ShapeDtypeStructs with shardings attached: the restore target for checkpoints."""
    plain = nn.meta.unbox(boxed)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), plain, shardings)
