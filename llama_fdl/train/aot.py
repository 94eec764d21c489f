"""The train step compiled ahead of time, and the dry run's report of what it needs per device.

The loop's step (`jit_train_step`) is lowered and compiled for abstract state and batch shapes
laid out on the mesh, so compiling allocates nothing and reads no data. The loop compiles this
way before its first step (to say how long compiling took, or that the persistent cache saved
it); `--dry_run` stops there and reports XLA's memory analysis of the program, per device: the
arguments (parameters, optimizer state, batch), the outputs and how much of them reuse donated
argument buffers, and the temporaries (activations kept for the backward pass, gradients,
workspace). benchmarks/gpu_check.py compares that estimate with a real step's peak.
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from jax.sharding import Mesh

from llama_fdl import compilation_cache, sharding
from llama_fdl.model.config import num_params
from llama_fdl.train import flops, preemption
from llama_fdl.train import state as state_lib
from llama_fdl.train.step import BATCH_FEATURES, jit_train_step


@dataclasses.dataclass
class DryRunReport:
    """What one compiled train step needs on each device, and what each device has."""

    num_params: int
    flops_per_token: float
    """Model FLOPs of training per token (llama_fdl.train.flops, causal attention)."""
    num_devices: int
    device_kind: str
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    """Output bytes written into donated argument buffers (counted once, in the arguments)."""
    temp_bytes: int
    generated_code_bytes: int
    device_memory_bytes: int | None
    """Memory of one device; None where it cannot be found out."""
    device_memory_source: str
    trace_seconds: float
    compile_seconds: float
    from_cache: bool
    """Whether the program came from the persistent compilation cache."""

    @property
    def peak_bytes(self) -> int:
        """Arguments, outputs that do not reuse an argument's buffer, temporaries and code."""
        return (
            self.argument_bytes
            + self.output_bytes
            - self.alias_bytes
            + self.temp_bytes
            + self.generated_code_bytes
        )

    @property
    def fits(self) -> bool | None:
        if self.device_memory_bytes is None:
            return None
        return self.peak_bytes <= self.device_memory_bytes

    def text(self) -> str:
        """The report as the launcher prints it."""
        gib = _size
        memory = "unknown" if self.device_memory_bytes is None else gib(self.device_memory_bytes)
        verdict = {True: "fits", False: "does NOT fit", None: "cannot tell whether it fits"}[self.fits]
        return "\n".join(
            [
                f"dry run: train step for {self.num_devices} x {self.device_kind} traced in "
                f"{self.trace_seconds:.1f} s, "
                + ("loaded from the persistent compilation cache" if self.from_cache else "compiled")
                + f" in {self.compile_seconds:.1f} s",
                f"parameters: {self.num_params:,}",
                f"model FLOPs per token (train): {self.flops_per_token:,.0f}",
                "memory per device (XLA's analysis of the compiled step):",
                f"  arguments    {gib(self.argument_bytes):>12}  (parameters, optimizer state, batch)",
                f"  outputs      {gib(self.output_bytes):>12}  ({gib(self.alias_bytes)} of them in "
                "donated argument buffers)",
                f"  temporaries  {gib(self.temp_bytes):>12}  (activations, gradients, workspace)",
                f"  code         {gib(self.generated_code_bytes):>12}",
                f"  peak         {gib(self.peak_bytes):>12}  of {memory} per device "
                f"({self.device_memory_source}): {verdict}",
            ]
        )


def _size(num_bytes: int) -> str:
    if num_bytes >= 2**30:
        return f"{num_bytes / 2**30:,.2f} GiB"
    return f"{num_bytes / 2**20:,.1f} MiB"


def abstract_inputs(
    model: nn.Module,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    *,
    batch_size: int,
    sequence_length: int,
    seed: int = 0,
):
    """The train state's and a batch's shapes, dtypes and shardings, and the state's shardings."""
    parallel = model.config.parallel
    boxed = state_lib.abstract_state(model, tx, sequence_length, seed)
    shardings = state_lib.state_shardings(boxed, mesh, parallel)
    state = state_lib.unboxed_abstract(boxed, shardings)
    batch_sh = sharding.batch_sharding(mesh, parallel)
    batch = {
        name: jax.ShapeDtypeStruct((batch_size, sequence_length), jnp.int32, sharding=batch_sh)
        for name in BATCH_FEATURES
    }
    return state, batch, shardings


@dataclasses.dataclass
class CompiledStep:
    """A compiled train step and how it was obtained."""

    step: jax.stages.Compiled
    trace_seconds: float
    """Wall time of tracing and lowering to XLA."""
    seconds: float
    """Wall time of compiling (or of loading from the cache)."""
    cache: compilation_cache.Hits
    """What the persistent compilation cache supplied."""

    def describe(self) -> str:
        traced = f"traced in {self.trace_seconds:.1f} s"
        if self.cache.count:
            compiling = self.cache.saved_seconds + self.seconds
            return (
                f"Train step {traced}, loaded from the persistent compilation cache in "
                f"{self.seconds:.1f} s (compiling it had taken {compiling:.1f} s)."
            )
        return f"Train step {traced}, compiled in {self.seconds:.1f} s."


def compile_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    mesh: Mesh,
    *,
    batch_size: int,
    sequence_length: int,
    seed: int = 0,
    num_microbatches: int = 1,
    skip_nonfinite: bool = False,
    with_intermediates: bool = False,
) -> CompiledStep:
    """The loop's train step compiled ahead of time for these shapes on `mesh` (with
    `with_intermediates`, the one that also returns the blocks' intermediates)."""
    state, batch, shardings = abstract_inputs(
        model, tx, mesh, batch_size=batch_size, sequence_length=sequence_length, seed=seed
    )
    step = jit_train_step(
        model,
        tx,
        schedule,
        mesh,
        shardings,
        num_microbatches=num_microbatches,
        skip_nonfinite=skip_nonfinite,
        with_intermediates=with_intermediates,
    )
    start = time.perf_counter()
    stop_flags = jax.ShapeDtypeStruct((mesh.size,), jnp.int32, sharding=preemption.flag_sharding(mesh))
    lowered = step.lower(state, batch, stop_flags)
    traced = time.perf_counter()
    with compilation_cache.watch() as hits:
        compiled = lowered.compile()
    return CompiledStep(compiled, traced - start, time.perf_counter() - traced, hits)


def device_memory(device: jax.Device) -> tuple[int | None, str]:
    """Bytes of memory one device has, and where that number comes from.

    Accelerators report their limit; CPU devices (also simulated ones) share the host's RAM,
    so each of this process's CPU devices gets an equal share of it.
    """
    stats = device.memory_stats() or {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"]), "the device's bytes_limit"
    if device.platform == "cpu":
        try:
            host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError):
            return None, "the host's memory is unknown"
        share = len(jax.local_devices(backend="cpu"))
        return host // share, f"host RAM / {share} CPU device(s)"
    return None, "the device does not report its memory"


def dry_run(
    model: nn.Module,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    mesh: Mesh,
    *,
    batch_size: int,
    sequence_length: int,
    seed: int = 0,
    num_microbatches: int = 1,
    skip_nonfinite: bool = False,
) -> DryRunReport:
    """Compiles the train step for `mesh`'s devices and reports what it needs per device."""
    compiled = compile_train_step(
        model,
        tx,
        schedule,
        mesh,
        batch_size=batch_size,
        sequence_length=sequence_length,
        seed=seed,
        num_microbatches=num_microbatches,
        skip_nonfinite=skip_nonfinite,
    )
    memory = compiled.step.memory_analysis()
    device = mesh.devices.flat[0]
    limit, source = device_memory(device)
    config = model.config
    return DryRunReport(
        num_params=num_params(config),
        flops_per_token=flops.flops_per_token(config, sequence_length, causal=config.causal),
        num_devices=mesh.size,
        device_kind=device.device_kind,
        argument_bytes=memory.argument_size_in_bytes,
        output_bytes=memory.output_size_in_bytes,
        alias_bytes=memory.alias_size_in_bytes,
        temp_bytes=memory.temp_size_in_bytes,
        generated_code_bytes=memory.generated_code_size_in_bytes,
        device_memory_bytes=limit,
        device_memory_source=source,
        trace_seconds=compiled.trace_seconds,
        compile_seconds=compiled.seconds,
        from_cache=compiled.cache.count > 0,
    )
