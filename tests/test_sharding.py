"""The mesh builder, the rules table, parameter specs, the batch-split check and the layout report.

Everything here runs on this process's one device or on stand-in devices, except the Llama-7B
layout, which a child computes by shape on 8 simulated CPU devices (nothing is allocated).
"""

from __future__ import annotations

import json
import pathlib
import sys

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec

from llama_fdl import sharding
from llama_fdl.model import LlamaConfig, LlamaTransformer, ParallelConfig, num_params

MESH_8 = {"data": 1, "fsdp": 8, "tensor": 1}
MESH_2x2x2 = {"data": 2, "fsdp": 2, "tensor": 2}


# --- The mesh ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sizes, devices, expected",
    [
        ((-1, 1, 1), 8, (8, 1, 1)),
        ((1, -1, 2), 8, (1, 4, 2)),
        ((2, 2, 2), 8, (2, 2, 2)),
        ((1, 1, -1), 1, (1, 1, 1)),
    ],
)
def test_axis_sizes_fill_in_the_rest(sizes, devices, expected):
    parallel = ParallelConfig(data_axis_size=sizes[0], fsdp_axis_size=sizes[1], tensor_axis_size=sizes[2])
    assert sharding.resolve_axis_sizes(parallel, devices) == expected


@pytest.mark.parametrize(
    "sizes, message",
    [
        ((2, 2, 1), "multiply to 4, but there are 8 devices"),
        ((3, -1, 1), "divisible by 3, but there are 8 devices"),
        ((-1, -1, 1), "At most one mesh axis size may be -1"),
    ],
)
def test_a_mesh_that_does_not_fit_the_devices_is_refused_with_the_numbers(sizes, message):
    parallel = ParallelConfig(data_axis_size=sizes[0], fsdp_axis_size=sizes[1], tensor_axis_size=sizes[2])
    with pytest.raises(ValueError, match=message):
        sharding.resolve_axis_sizes(parallel, 8)


def test_build_mesh_uses_the_configured_axis_names():
    parallel = ParallelConfig(data_axis_name="dp", fsdp_axis_name="zero", tensor_axis_name="mp")
    mesh = sharding.build_mesh(parallel)
    assert mesh.axis_names == ("dp", "zero", "mp") and mesh.size == jax.device_count()
    assert dict(sharding.logical_rules(parallel))["batch"] == ("dp", "zero")


# --- Parameter specs -------------------------------------------------------------------------


def _spec(names, shape, mesh_shape=MESH_2x2x2, **parallel_fields):
    parallel = ParallelConfig(**{"fsdp_min_weight_size": 0, **parallel_fields})
    return sharding.param_spec(names, shape, mesh_shape, parallel)


def test_kernels_split_over_fsdp_on_embed_and_over_tensor_on_heads_and_mlp():
    assert _spec(("embed", "heads", "head_dim"), (64, 4, 16)) == PartitionSpec("fsdp", "tensor", None)
    assert _spec(("layers", "mlp", "embed"), (2, 192, 64)) == PartitionSpec(None, "tensor", "fsdp")
    assert _spec(("norm",), (64,)) == PartitionSpec(None)


def test_key_value_heads_split_over_tensor_where_they_divide():
    # Grouped-query attention: 2 kv heads split 2 ways; 1 kv head stays whole (and is copied to
    # both tensor devices) while the 4 query heads still split.
    assert _spec(("embed", "kv_heads", "head_dim"), (64, 2, 16)) == PartitionSpec("fsdp", "tensor", None)
    assert _spec(("embed", "kv_heads", "head_dim"), (64, 1, 16)) == PartitionSpec("fsdp", None, None)
    assert _spec(("embed", "heads", "head_dim"), (64, 4, 16)) == PartitionSpec("fsdp", "tensor", None)


def test_small_weights_stay_off_fsdp_counting_one_layer_not_the_stack():
    # 64 x 192 = 12288 elements per layer; the 2-layer stack's 24576 must not count.
    names, shape = ("layers", "embed", "mlp"), (2, 64, 192)
    assert _spec(names, shape, fsdp_min_weight_size=12288) == PartitionSpec(None, "fsdp", "tensor")
    assert _spec(names, shape, fsdp_min_weight_size=12289) == PartitionSpec(None, None, "tensor")


def test_an_axis_that_does_not_divide_a_dimension_is_dropped_for_it():
    assert _spec(("vocab", "embed"), (259, 64)) == PartitionSpec(None, "fsdp")
    assert _spec(("embed", "vocab"), (64, 260)) == PartitionSpec("fsdp", "tensor")


def test_gathered_layout_keeps_tensor_and_drops_fsdp():
    parallel = ParallelConfig(fsdp_min_weight_size=0)
    spec = sharding.param_spec(("embed", "mlp"), (64, 192), MESH_2x2x2, parallel, gather_fsdp=True)
    assert spec == PartitionSpec(None, "tensor")


def test_default_min_size_keeps_the_tiny_model_replicated_on_fsdp():
    parallel = ParallelConfig()  # fsdp_min_weight_size = 2**18
    spec = sharding.param_spec(("embed", "mlp"), (32, 128), MESH_8, parallel)
    assert spec == PartitionSpec(None, "tensor")  # tensor is size 1 here: harmless


# --- Processes and batch rows ------------------------------------------------------------------


class _Device:
    """Stands in for a jax device of another process; enough for devices_indices_map."""

    platform = device_kind = "cpu"

    def __init__(self, index: int, process: int):
        self.id, self.process_index = index, process

    def __repr__(self) -> str:
        return f"device {self.id} of process {self.process_index}"


@pytest.mark.parametrize("sizes, ok", [((1, 2, 2), True), ((2, 1, 2), True), ((1, 1, 4), False)])
def test_processes_must_own_distinct_batch_rows(sizes, ok):
    devices = np.array([_Device(i, i // 2) for i in range(4)]).reshape(sizes)  # 2 processes x 2
    mesh = Mesh(devices, ("data", "fsdp", "tensor"))
    if ok:
        sharding.check_batch_split_by_process(mesh, ParallelConfig(), batch_size=8)
    else:
        with pytest.raises(ValueError, match="tensor axis spans processes"):
            sharding.check_batch_split_by_process(mesh, ParallelConfig(), batch_size=8)


# --- The report ----------------------------------------------------------------------------------


def test_report_lists_every_parameter_with_its_bytes_and_the_totals():
    import optax

    from llama_fdl.train import state as state_lib

    config = LlamaConfig(vocab_size=259, embedding_dim=32, num_blocks=2, head_dim=16)
    model, mesh = LlamaTransformer(config), sharding.build_mesh(config.parallel)
    boxed = state_lib.abstract_state(model, optax.adam(1e-3), 16, 0)
    target = state_lib.unboxed_abstract(boxed, state_lib.state_shardings(boxed, mesh, config.parallel))
    text = sharding.report(mesh, target.params, target.opt_state)
    lines = text.splitlines()
    assert lines[0].startswith("mesh: data=1 x fsdp=1 x tensor=1")
    assert lines[1].split() == ["parameter", "shape", "PartitionSpec", "bytes/device"]
    embed = next(line for line in lines if line.startswith("embed/embedding"))
    assert embed.split()[-1] == f"{259 * 32 * 4:,}"
    assert f"parameters: {num_params(config):,}" in text
    # One device holds everything: params once, Adam's two moments, and its step counter.
    assert f"total per device: {3 * 4 * num_params(config) + 4:,} bytes" in text


def test_llama_7b_layout_on_8_way_fsdp(run_on_cpu_devices):
    result = run_on_cpu_devices(pathlib.Path(__file__))
    assert result["num_params"] == 6_738_415_616
    per_device = result["per_device_bytes"]
    # Every matrix splits 8 ways; the 65 norm scales (float32, 4096 each) stay whole.
    norms = (2 * 32 + 1) * 4096
    params_bytes = 4 * ((result["num_params"] - norms) // 8 + norms)
    assert per_device == 3 * params_bytes + 4, result["report"]


def _llama_7b_report() -> dict:
    import optax

    from llama_fdl.train import state as state_lib

    parallel = ParallelConfig(data_axis_size=1, fsdp_axis_size=8)
    config = LlamaConfig(
        vocab_size=32000,
        embedding_dim=4096,
        num_blocks=32,
        head_dim=128,
        ffn_multiple_of=256,
        parallel=parallel,
    )
    model, mesh = LlamaTransformer(config), sharding.build_mesh(parallel)
    boxed = state_lib.abstract_state(model, optax.adamw(1e-4), 2048, 0)
    target = state_lib.unboxed_abstract(boxed, state_lib.state_shardings(boxed, mesh, parallel))
    per_device = sum(sharding.bytes_per_device(x) for x in jax.tree.leaves((target.params, target.opt_state)))
    return {
        "report": sharding.report(mesh, target.params, target.opt_state),
        "num_params": num_params(config),
        "per_device_bytes": per_device,
    }


if __name__ == "__main__":
    result = _llama_7b_report()
    if sys.argv[1:] == ["--print"]:
        print(result["report"], file=sys.stderr)
    print(json.dumps(result))
