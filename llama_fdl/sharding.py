"""Device mesh construction and the one table mapping logical axes to mesh axes.

Layers name logical axes only ("embed", "heads", "mlp", ...); `LOGICAL_RULES` below is the single
place that says which mesh axis each one is split over.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from llama_fdl.model.config import ParallelConfig


def logical_rules(parallel: ParallelConfig) -> tuple[tuple[str, object], ...]:
    """Logical axis -> mesh axes, in priority order (flax skips a mesh axis already used)."""
    data, fsdp, tensor = parallel.axis_names
    return (
        ("batch", (data, fsdp)),
        ("length", None),
        ("vocab", tensor),
        ("heads", tensor),
        ("mlp", tensor),
        ("embed", fsdp),
        ("head_dim", None),
        ("kv", None),
        ("norm", None),
        ("layers", None),
    )


def resolve_axis_sizes(parallel: ParallelConfig, num_devices: int) -> tuple[int, int, int]:
    """Axis sizes with the single -1 replaced by whatever the other axes leave."""
    sizes = list(parallel.axis_sizes)
    unknown = [i for i, s in enumerate(sizes) if s == -1]
    if len(unknown) > 1:
        raise ValueError(f"At most one mesh axis size may be -1; got sizes {tuple(sizes)}.")
    known = math.prod(s for s in sizes if s != -1)
    if unknown:
        if num_devices % known:
            raise ValueError(
                f"Mesh sizes {tuple(sizes)} need a device count divisible by {known}, "
                f"but there are {num_devices} devices."
            )
        sizes[unknown[0]] = num_devices // known
    if math.prod(sizes) != num_devices:
        named = dict(zip(parallel.axis_names, sizes, strict=True))
        raise ValueError(
            f"Mesh sizes {named} multiply to {math.prod(sizes)}, "
            f"but there are {num_devices} devices; make the product {num_devices} or use -1 for one axis."
        )
    return tuple(sizes)


def build_mesh(parallel: ParallelConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (default: all devices of all processes)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = resolve_axis_sizes(parallel, len(devices))
    return Mesh(np.asarray(devices).reshape(sizes), parallel.axis_names)


def batch_sharding(mesh: Mesh, parallel: ParallelConfig) -> NamedSharding:
    """Rows of a [batch, length] array are split over the data and fsdp axes."""
    return NamedSharding(mesh, PartitionSpec((parallel.data_axis_name, parallel.fsdp_axis_name)))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def shardings_of(boxed_tree, mesh: Mesh, parallel: ParallelConfig):
    """NamedShardings for a tree of (possibly abstract) values carrying logical-axis metadata."""
    specs = nn.get_partition_spec(boxed_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, logical_rules(parallel))
