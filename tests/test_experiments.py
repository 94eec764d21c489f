"""Every experiment and fiddler builds, round-trips through Fiddle JSON, and initialises by shape."""

import copy

import fiddle as fdl
import jax
import jax.numpy as jnp
import pytest
from fiddle.experimental import serialization

import experiments
from llama_fdl.model import num_params
from llama_fdl.train import state as state_lib
from llama_fdl.train.config import Experiment


@pytest.mark.parametrize("name", experiments.EXPERIMENTS)
def test_experiment_builds_serializes_and_initialises_by_shape(name):
    cfg = getattr(experiments, name)()
    assert getattr(experiments, name).__doc__, f"experiments.{name} needs a docstring"
    restored = serialization.load_json(serialization.dump_json(cfg))
    assert restored == cfg
    built = fdl.build(restored)
    assert isinstance(built, Experiment)
    built.validate()
    tx, _ = built.optimizer(built.trainer.num_train_steps)
    abstract = state_lib.abstract_state(built.model, tx, built.data.sequence_length, seed=0)
    params = jax.tree.leaves(fdl_free_unbox(abstract.params))
    assert sum(p.size for p in params) == num_params(built.model.config)


def fdl_free_unbox(tree):
    from flax import linen as nn

    return nn.meta.unbox(tree)


@pytest.mark.parametrize("fiddler", experiments.FIDDLERS)
def test_fiddler_changes_the_graph_and_still_builds(fiddler):
    cfg = experiments.tiny()
    before = copy.deepcopy(cfg)
    getattr(experiments, fiddler)(cfg)
    assert cfg != before, f"fiddler {fiddler} changed nothing"
    built = fdl.build(serialization.load_json(serialization.dump_json(cfg)))
    tokens = jnp.zeros((1, built.data.sequence_length), jnp.int32)
    jax.eval_shape(built.model.init, jax.random.key(0), tokens)


def test_small_is_base_plus_its_changes():
    small, base = experiments.small(), experiments.base()
    assert small.model.config.embedding_dim != base.model.config.embedding_dim
    assert small.data == base.data and small.mesh == base.mesh


def test_parallel_config_is_shared_by_model_and_mesh():
    cfg = experiments.tiny()
    cfg.model.config.parallel.data_axis_size = 1
    assert cfg.mesh.parallel.data_axis_size == 1
    assert fdl.build(cfg).mesh.shape["data"] == 1
