"""Device mesh construction, the one table mapping logical axes to mesh axes, and its report.

Layers name logical axes only ("embed", "heads", "mlp", ...); `logical_rules` below is the single
place that says which mesh axis each one is split over. Parameters and optimizer state take their
shardings from `shardings_of`, which applies the table with two exceptions: a parameter smaller
than `ParallelConfig.fsdp_min_weight_size` is not split over fsdp, and a mesh axis that does not
divide an array dimension is dropped for that dimension (jax refuses uneven array shardings).
Activations take theirs from the model's `nn.with_logical_constraint` calls, which act only
inside `logical_axis_scope(mesh, parallel)`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import linen as nn
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from llama_fdl.model.config import ParallelConfig

LAYERS_AXIS = "layers"
"""The leading axis nn.scan stacks onto every block parameter (see llama_fdl.model.stack)."""


def logical_rules(parallel: ParallelConfig) -> tuple[tuple[str, Any], ...]:
    """Logical axis -> mesh axes, in priority order (flax skips a mesh axis already used).

    The batch goes over data x fsdp, so FSDP devices each see their own rows; parameters are
    split over fsdp along "embed" and over tensor along heads (query and key/value heads alike),
    MLP units and the vocabulary.
    Because "batch" comes first, an activation's "embed" axis is never split over fsdp.
    """
    data, fsdp, tensor = parallel.axis_names
    return (
        ("batch", (data, fsdp)),
        ("length", None),
        ("vocab", tensor),
        ("heads", tensor),
        ("kv_heads", tensor),  # dropped where the tensor axis does not divide them
        ("mlp", tensor),
        ("embed", fsdp),
        ("head_dim", None),
        ("norm", None),
        (LAYERS_AXIS, None),
    )


# --- The mesh ------------------------------------------------------------------------------


def resolve_axis_sizes(parallel: ParallelConfig, num_devices: int) -> tuple[int, int, int]:
    """Axis sizes with the single -1 replaced by whatever the other axes leave."""
    sizes = list(parallel.axis_sizes)
    named = lambda: dict(zip(parallel.axis_names, sizes, strict=True))  # noqa: E731
    unknown = [i for i, s in enumerate(sizes) if s == -1]
    if len(unknown) > 1:
        raise ValueError(f"At most one mesh axis size may be -1; got sizes {named()}.")
    known = math.prod(s for s in sizes if s != -1)
    if unknown:
        if num_devices % known:
            raise ValueError(
                f"Mesh sizes {named()} need a device count divisible by {known}, "
                f"but {_there_are(num_devices)}."
            )
        sizes[unknown[0]] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(
            f"Mesh sizes {named()} multiply to {math.prod(sizes)}, but {_there_are(num_devices)}; "
            f"make the product {num_devices} or set one axis size to -1."
        )
    return tuple(sizes)


def _there_are(num_devices: int) -> str:
    return "there is 1 device" if num_devices == 1 else f"there are {num_devices} devices"


def build_mesh(parallel: ParallelConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (default: all devices of all processes).

    The tensor axis is innermost, so it stays within a host when it fits there; on TPUs
    mesh_utils follows the physical topology.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = resolve_axis_sizes(parallel, len(devices))
    return Mesh(mesh_utils.create_device_mesh(sizes, devices), parallel.axis_names)


def batch_sharding(mesh: Mesh, parallel: ParallelConfig) -> NamedSharding:
    """Rows of a [batch, length] array are split over the data and fsdp axes."""
    return NamedSharding(mesh, PartitionSpec((parallel.data_axis_name, parallel.fsdp_axis_name)))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def check_batch_split_by_process(mesh: Mesh, parallel: ParallelConfig, batch_size: int) -> None:
    """Refuses a mesh on which processes would share batch rows.

    Each process reads its own data shard and contributes `batch_size / process_count` rows; that
    only adds up if every process owns a distinct block of rows, i.e. the tensor axis (over which
    rows are replicated) never spans two processes.
    """
    indices = batch_sharding(mesh, parallel).devices_indices_map((batch_size,))
    rows_of: dict[int, set[int]] = {}
    for device, (rows,) in indices.items():
        rows_of.setdefault(device.process_index, set()).update(range(*rows.indices(batch_size)))
    if sum(len(r) for r in rows_of.values()) != batch_size:
        raise ValueError(
            f"The mesh {dict(mesh.shape)} puts devices of different processes on the same batch "
            f"rows (its tensor axis spans processes); keep tensor_axis_size at most the "
            f"{jax.local_device_count()} devices of one process."
        )


# --- Parameter and optimizer-state shardings -----------------------------------------------


def param_spec(
    names: Sequence[str | None],
    shape: Sequence[int],
    mesh_shape: Mapping[str, int],
    parallel: ParallelConfig,
    *,
    gather_fsdp: bool = False,
) -> PartitionSpec:
    """The PartitionSpec of one parameter with logical axes `names`, by the rules table.

    Args:
      names: one logical axis name per dimension.
      shape: the parameter's shape.
      mesh_shape: mesh axis name -> size.
      parallel: axis names and `fsdp_min_weight_size`.
      gather_fsdp: drop the fsdp axis everywhere: the layout of a parameter gathered for use.
    """
    rules = logical_rules(parallel)
    axes = list(nn.logical_to_mesh_axes(tuple(names), rules))
    # The weight's own size: a scanned parameter is num_blocks weights stacked, each of which
    # is what a block multiplies by, so the stack axis does not count.
    per_layer = math.prod(d for d, n in zip(shape, names, strict=True) if n != LAYERS_AXIS)
    drop_fsdp = gather_fsdp or per_layer < parallel.fsdp_min_weight_size
    for i, (dim, axis) in enumerate(zip(shape, axes, strict=True)):
        kept = tuple(
            a
            for a in ((axis,) if isinstance(axis, str) else axis or ())
            if not (drop_fsdp and a == parallel.fsdp_axis_name)
        )
        if dim % math.prod(mesh_shape[a] for a in kept):
            kept = ()  # jax refuses uneven shardings; this dimension stays whole
        axes[i] = kept[0] if len(kept) == 1 else (kept or None)
    return PartitionSpec(*axes)


def shardings_of(boxed_tree, mesh: Mesh, parallel: ParallelConfig, *, gather_fsdp: bool = False):
    """NamedShardings for a tree whose parameters carry logical-axis boxes; the rest replicated.

    Optimizer moments are boxed like their parameters (optax maps over the boxes), so they get
    the same shardings; counters and rngs are replicated.
    """

    def one(leaf) -> NamedSharding:
        if isinstance(leaf, nn.Partitioned):
            names = leaf.get_partition_spec()  # the logical names, one per dimension
            spec = param_spec(names, leaf.value.shape, mesh.shape, parallel, gather_fsdp=gather_fsdp)
            return NamedSharding(mesh, spec)
        return replicated(mesh)

    return jax.tree.map(one, boxed_tree, is_leaf=lambda x: isinstance(x, nn.Partitioned))


@contextlib.contextmanager
def logical_axis_scope(mesh: Mesh, parallel: ParallelConfig) -> Iterator[None]:
    """Makes the model's `nn.with_logical_constraint` calls constrain activations on `mesh`.

    Flax turns those calls into sharding constraints only when both logical rules and a mesh
    are in context; outside this scope they are silently no-ops. Enter it inside the function
    being jitted (an abstract mesh is allowed under tracing, `jax.set_mesh` is not).
    """
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(logical_rules(parallel)):
        yield


# --- The report: what lives where ----------------------------------------------------------


def bytes_per_device(x) -> int:
    """Bytes of one device's shard of `x` (a jax.Array or a ShapeDtypeStruct with a sharding)."""
    return math.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize


def report(mesh: Mesh, params, optimizer_state=None) -> str:
    """The mesh, then one line per parameter: path, shape, PartitionSpec, bytes per device.

    Takes arrays or ShapeDtypeStructs that carry their shardings (a checkpoint restore target),
    so a layout can be read before anything is allocated.
    """
    sizes = " x ".join(f"{name}={size}" for name, size in mesh.shape.items())
    processes = jax.process_count()
    lines = [f"mesh: {sizes} ({_count(mesh.size, 'device')}, {_count(processes, 'process')})"]
    rows = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        rows.append((name, str(tuple(leaf.shape)), _spec_text(leaf.sharding), bytes_per_device(leaf)))
    header = ("parameter", "shape", "PartitionSpec", "bytes/device")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    fmt = lambda c: f"{c[0]:<{widths[0]}}  {c[1]:<{widths[1]}}  {c[2]:<{widths[2]}}  {c[3]:>15}"  # noqa: E731
    lines += [fmt(header), *(fmt((*r[:3], f"{r[3]:,}")) for r in rows)]
    param_bytes = sum(r[3] for r in rows)
    num_params = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))
    lines.append(f"parameters: {num_params:,} ({_mib(param_bytes)} per device)")
    total = param_bytes
    if optimizer_state is not None:
        opt_bytes = sum(bytes_per_device(x) for x in jax.tree.leaves(optimizer_state))
        lines.append(f"optimizer state: {_mib(opt_bytes)} per device")
        total += opt_bytes
        lines.append(f"total per device: {total:,} bytes ({_mib(total)})")
    return "\n".join(lines)


def _spec_text(sharding) -> str:
    spec = getattr(sharding, "spec", PartitionSpec())
    return "P(" + ", ".join(_axis_text(a) for a in spec) + ")"


def _axis_text(axis) -> str:
    if axis is None:
        return "None"
    if isinstance(axis, str):
        return axis
    return "(" + ", ".join(axis) + ")"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}es" if noun.endswith("s") else f"{n} {noun}s"


def _mib(num_bytes: int) -> str:
    return f"{num_bytes / 2**20:,.2f} MiB"
