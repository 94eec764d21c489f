"""xlstm-jax configs port: its ParallelConfig keywords (as its configs/parallel/*.yaml write them)
become llama_fdl's ParallelConfig, train `tiny`, and the run logs xlstm-jax's intermediates."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from launcher import scalars

import experiments
from llama_fdl import runner
from llama_fdl.model import xlstm_jax
from llama_fdl.model.config import ParallelConfig
from llama_fdl.train import preemption
from llama_fdl.train import state as state_lib
from llama_fdl.train.step import jit_train_step

# xlstm_jax.models.configs.ParallelConfig's fields and defaults (NX-AI/xlstm-jax at 0f3ebc2).
XLSTM_JAX_FIELDS = {
    "data_axis_size": -1,
    "fsdp_axis_size": 1,
    "pipeline_axis_size": 1,
    "model_axis_size": 1,
    "data_axis_name": "dp",
    "fsdp_axis_name": "fsdp",
    "pipeline_axis_name": "pp",
    "model_axis_name": "tp",
    "remat": [],
    "fsdp_modules": [],
    "fsdp_min_weight_size": 2**18,
    "fsdp_gather_dtype": None,
    "fsdp_grad_scatter_dtype": None,
    "tp_async_dense": False,
}

# The keyword sets of its configs/parallel/*.yaml (hydra's `defaults:` list left out).
DEFAULT_YAML = {**XLSTM_JAX_FIELDS, "pipeline_axis_name": "pipe"}
LLAMA_YAMLS = {
    "llama165M": {"fsdp_modules": [], "remat": ["TransformerBlock"], "fsdp_axis_size": 1,
                  "model_axis_size": 1, "data_axis_size": -1},
    "llama1.3B": {"fsdp_modules": [], "remat": ["TransformerBlock"], "fsdp_axis_size": 1,
                  "model_axis_size": 1, "data_axis_size": -1},
    "llama7B": {"fsdp_modules": ["Embed", "LMHead", "TransformerBlock"], "remat": ["AttnBlock", "FFNBlock"],
                "fsdp_axis_size": 8, "model_axis_size": 1, "data_axis_size": -1},
}  # fmt: skip
MLSTM_7B_YAML = {
    "data_axis_name": "dp", "fsdp_axis_name": "fsdp", "model_axis_name": "tp", "pipeline_axis_name": "pp",
    "fsdp_modules": ["Embed", "LMHead", "mLSTMBlock"], "fsdp_gather_dtype": "bfloat16",
    "fsdp_min_weight_size": 262144, "remat": ["xLSTMResBlock", "FFNResBlock"], "fsdp_axis_size": 8,
    "model_axis_size": 1, "data_axis_size": -1, "tp_async_dense": False,
}  # fmt: skip


def test_the_converter_takes_exactly_xlstm_jax_names_and_defaults():
    signature = inspect.signature(xlstm_jax.parallel_config)
    assert list(signature.parameters) == list(XLSTM_JAX_FIELDS)
    for name, expected in XLSTM_JAX_FIELDS.items():
        default = signature.parameters[name].default
        assert (list(default) if isinstance(default, tuple) else default) == expected, name
    # xlstm-jax's default `remat=[]` keeps every activation: "none", not llama_fdl's own default.
    assert xlstm_jax.parallel_config() == ParallelConfig(
        data_axis_name="dp", fsdp_axis_name="fsdp", tensor_axis_name="tp", remat="none"
    )
    assert ParallelConfig().remat != "none"  # control: the remat above is the converter's choice


@pytest.mark.parametrize("name", sorted(LLAMA_YAMLS))
def test_xlstm_jax_llama_parallel_yamls_convert(name):
    converted = xlstm_jax.parallel_config(**{**DEFAULT_YAML, **LLAMA_YAMLS[name]})
    expected_remat = "attention_and_ffn" if name == "llama7B" else "full"
    assert converted == ParallelConfig(
        data_axis_name="dp",
        fsdp_axis_name="fsdp",
        tensor_axis_name="tp",
        data_axis_size=-1,
        fsdp_axis_size=LLAMA_YAMLS[name]["fsdp_axis_size"],
        tensor_axis_size=1,
        remat=expected_remat,
    )


def test_an_mlstm_yaml_is_refused_by_name():
    # Control: a keyword set for another model is not silently taken.
    with pytest.raises(
        ValueError, match=r"remat names \['xLSTMResBlock', 'FFNResBlock'\], which xlstm-jax's Llama"
    ):
        xlstm_jax.parallel_config(**MLSTM_7B_YAML)


@pytest.mark.parametrize(
    "modules, remat",
    [
        ([], "none"),
        (["TransformerBlock"], "full"),
        (["AttnBlock"], "attention"),
        (["FFNBlock"], "ffn"),
        (["AttnBlock", "FFNBlock"], "attention_and_ffn"),
        (["FFNBlock", "AttnBlock"], "attention_and_ffn"),
        (["TransformerBlock", "AttnBlock"], "full"),
    ],
)
def test_remat_module_lists_map_onto_block_remat(modules, remat):
    assert xlstm_jax.parallel_config(remat=modules).remat == remat


@pytest.mark.parametrize(
    "keywords, message",
    [
        ({"pipeline_axis_size": 2}, "pipeline_axis_size=2: llama_fdl has no pipeline parallelism"),
        ({"pipeline_axis_size": -1}, "pipeline_axis_size=-1: llama_fdl has no pipeline parallelism"),
        ({"tp_async_dense": True}, "tp_async_dense=True"),
        ({"fsdp_gather_dtype": "bfloat16"}, "fsdp_gather_dtype='bfloat16': llama_fdl has no separate"),
        ({"fsdp_grad_scatter_dtype": "float32"}, "fsdp_grad_scatter_dtype='float32'"),
        ({"remat": ["Embed"]}, "within transformer blocks only, not Embed"),
        ({"remat": ["MLPBlock"]}, r"remat names \['MLPBlock'\]"),
        ({"remat": "TransformerBlock"}, "must be a list of module names"),
        ({"fsdp_axis_size": 8, "fsdp_modules": ["TransformerBlock"]}, "list the whole model"),
        ({"fsdp_axis_size": -1, "fsdp_modules": []}, "or set fsdp_axis_size=1"),
    ],
)
def test_what_llama_fdl_does_not_do_is_refused_in_one_sentence(keywords, message):
    with pytest.raises(ValueError, match=message) as error:
        xlstm_jax.parallel_config(**keywords)
    assert "\n" not in str(error.value)


def test_whole_model_fsdp_lists_are_accepted():
    for modules in (
        ["Embed", "LMHead", "TransformerBlock"],
        ["Embed", "BlockStack", "LMHead"],
        ["Embed", "LMHead", "AttnBlock", "FFNBlock"],
    ):
        assert xlstm_jax.parallel_config(fsdp_axis_size=8, fsdp_modules=modules).fsdp_axis_size == 8


def tiny_as_xlstm_jax_writes_it(**trainer):
    """experiments.tiny laid out by llama7B.yaml's keywords (on one device: fsdp_axis_size 1)."""
    cfg = experiments.tiny()
    experiments.xlstm_parallel(cfg, **{**DEFAULT_YAML, **LLAMA_YAMLS["llama7B"], "fsdp_axis_size": 1})
    cfg.optimizer.warmup_steps = 1
    for name, value in {"num_train_steps": 4, "eval_every": 4, "log_every": 1, **trainer}.items():
        setattr(cfg.trainer, name, value)
    return cfg


def test_an_xlstm_jax_parallel_config_trains_tiny_and_logs_intermediates(tmp_path):
    cfg = tiny_as_xlstm_jax_writes_it(log_intermediates_every=2)
    experiment = runner.check(cfg)
    parallel = experiment.model.config.parallel
    assert parallel.remat == "attention_and_ffn" and parallel.tensor_axis_name == "tp"
    assert experiment.mesh.axis_names == ("dp", "fsdp", "tp")
    assert experiment.model.config.parallel is parallel
    final = runner.run(cfg, tmp_path / "run", experiment=experiment)
    assert np.isfinite(final["eval/loss"])
    series = scalars(tmp_path / "run")
    assert sorted(series["train/loss"]) == [1, 2, 3, 4]
    names = ("attn_out_std", "attn_out_abs_max", "ffn_out_std", "ffn_out_abs_max")
    expected = {f"intermediates/block_{i}/{name}" for i in range(2) for name in names}
    assert {tag for tag in series if tag.startswith("intermediates/")} == expected
    for tag in expected:
        assert sorted(series[tag]) == [2, 4], tag  # every log_intermediates_every steps, no others
        assert all(np.isfinite(v) and v > 0 for v in series[tag].values()), tag
    for i in range(2):  # the largest |value| is at least the typical spread
        for part in ("attn_out", "ffn_out"):
            std, top = (series[f"intermediates/block_{i}/{part}_{s}"][2] for s in ("std", "abs_max"))
            assert top > std


def test_the_intermediates_step_trains_exactly_like_the_normal_one():
    experiment = runner.check(tiny_as_xlstm_jax_writes_it(num_microbatches=2))
    model, mesh, seq_len = experiment.model, experiment.mesh, experiment.data.sequence_length
    tx, schedule = experiment.optimizer(experiment.trainer.num_train_steps)
    boxed = state_lib.abstract_state(model, tx, seq_len, 0)
    shardings = state_lib.state_shardings(boxed, mesh, model.config.parallel)
    tokens = jax.random.randint(jax.random.key(3), (8, seq_len), 1, 259)
    batch = {
        "decoder_input_tokens": tokens,
        "decoder_target_tokens": jnp.roll(tokens, -1, axis=1),
        "decoder_loss_weights": jnp.ones_like(tokens),
        "decoder_segment_ids": jnp.ones_like(tokens),
        "decoder_positions": jnp.broadcast_to(jnp.arange(seq_len), tokens.shape),
    }
    fresh = lambda: state_lib.init_state(model, tx, seq_len, 0, mesh, model.config.parallel)[0]  # noqa: E731
    steps = {
        recording: jit_train_step(
            model, tx, schedule, mesh, shardings, num_microbatches=2, with_intermediates=recording
        )
        for recording in (False, True)
    }

    def two_steps(first, second, batch):  # the first step's learning rate is 0 (warmup)
        no_stop = preemption.StopRequest().flags(preemption.flag_sharding(mesh))  # as the loop passes
        state, _ = first(fresh(), batch, no_stop)
        return second(state, batch, no_stop)

    plain, plain_metrics = two_steps(steps[False], steps[False], batch)
    recorded, recorded_metrics = two_steps(steps[True], steps[True], batch)
    # Control: one row's loss dropped changes the update by far more than the tolerance.
    fewer = {**batch, "decoder_loss_weights": batch["decoder_loss_weights"].at[0].set(0)}
    other, _ = two_steps(steps[False], steps[False], fewer)
    assert float(plain_metrics["opt/learning_rate"]) > 0
    assert not any(k.startswith("intermediates/") for k in plain_metrics)
    assert len([k for k in recorded_metrics if k.startswith("intermediates/")]) == 8
    np.testing.assert_allclose(recorded_metrics["train/loss"], plain_metrics["train/loss"], rtol=1e-6)

    def same(a_tree, b_tree) -> bool:
        pairs = zip(jax.tree.leaves(a_tree), jax.tree.leaves(b_tree), strict=True)
        return all(np.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in pairs)

    assert same(recorded.params, plain.params)
    assert not same(other.params, plain.params)
