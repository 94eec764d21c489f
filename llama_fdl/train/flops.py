"""Model FLOPs per token, peak FLOP/s per device, and model FLOPs utilization (MFU).

The convention, stated once: a training step costs 6 FLOPs per matmul parameter per token
(forward 2, backward 4) plus attention, 6·L·H·Q·T per token with a causal mask (half of the
score and value matmuls are masked away; L blocks, H heads of width Q, sequence length T). The
non-causal variant counts the full 12·L·H·Q·T and is logged beside it. Embedding lookups, norms
and softmax are not counted. MFU = achieved model FLOP/s / (devices × peak FLOP/s per device).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from llama_fdl.model.config import LlamaConfig, num_matmul_params

# Dense bf16 peak FLOP/s per device from vendor datasheets (no sparsity).
# More specific names first: a device kind takes the first entry it starts with.
KNOWN_PEAKS = {
    "NVIDIA H200 NVL": 835e12,
    "NVIDIA H200": 989e12,
    "NVIDIA H100 PCIe": 756e12,
    "NVIDIA H100 NVL": 835e12,
    "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA H100": 989e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
    "NVIDIA A100": 312e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
}


def flops_per_token(config: LlamaConfig, seq_len: int, causal: bool = True) -> float:
    """Training FLOPs per token: 6·N_matmul + (6 if causal else 12)·L·H·Q·T."""
    attention = (6 if causal else 12) * config.num_blocks * config.num_heads * config.head_dim * seq_len
    return 6.0 * num_matmul_params(config) + attention


def peak_flops_per_device(device: jax.Device | None = None) -> tuple[float, str]:
    """The table's peak for this device kind, or on CPU (or an unknown kind) a measured one.

    Returns the peak and where it came from, for the log.
    """
    device = device or jax.devices()[0]
    kind = device.device_kind
    for name, peak in KNOWN_PEAKS.items():
        if kind == name or kind.startswith(name):
            return peak, f"table entry {name!r}"
    return measure_matmul_flops(device), f"measured float32 matmul on {kind!r}"


def measure_matmul_flops(device: jax.Device, n: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of a float32 n×n matmul on `device`: best of `repeats`, after one warm-up."""
    a = jax.device_put(jnp.ones((n, n), jnp.float32), device)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best


def mfu(tokens_per_sec: float, flops_per_token_: float, num_devices: int, peak_per_device: float) -> float:
    return tokens_per_sec * flops_per_token_ / (num_devices * peak_per_device)
