"""The train step of llama_fdl against HF transformers' LlamaForCausalLM with torch's AdamW.

Both sides train the same model (HF's config comes from `llama_fdl.model.hf.hf_config_from_llama`)
on the same batch in the same dtype, and one step is the same work on both: forward, backward,
global-norm clipping at 1.0, an AdamW update (lr 3e-3, betas 0.9/0.95, eps 1e-8, weight decay
0.1), waiting until it is done. llama_fdl's step is the train loop's own (`jit_train_step` with
`optim.adamw`, the state donated); HF's uses sdpa attention, `F.cross_entropy` over the logits
and `torch.optim.AdamW` with `clip_grad_norm_`. bfloat16 means bfloat16 compute with float32
parameters on both sides (torch.autocast for HF).

They run in one process, in alternating rounds of a few steps each (which side goes first
alternates too), so that load from other processes falls on both; the ratio is the median of
the per-round ratios of tokens/s. Both use as many threads as the process may run on, so
`taskset -c 1 python -m benchmarks.step_vs_hf` compares them on one core. Where JAX runs on a
GPU, HF runs on torch's CUDA device too, synchronised after each step (run with
`XLA_PYTHON_CLIENT_PREALLOCATE=false`, so that JAX leaves torch its share of the memory), and
`--attention=cudnn` puts llama_fdl's attention on cuDNN's fused kernel as sdpa's is. Run with
`--help`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time
from collections.abc import Callable

import jax

from benchmarks import shapes as shapes_lib
from llama_fdl import optim, sharding
from llama_fdl.model import LlamaTransformer
from llama_fdl.train import flops, preemption
from llama_fdl.train import state as state_lib
from llama_fdl.train.step import jit_train_step

LEARNING_RATE = 3e-3


@dataclasses.dataclass
class StepComparison:
    """One shape and dtype: both sides' speed and llama_fdl's over HF's."""

    shape: str
    dtype: str
    num_params: int
    fdl_tokens_per_s: float
    hf_tokens_per_s: float
    ratio: float
    """Median over rounds of llama_fdl's tokens/s over HF's."""
    fdl_gflops: float
    hf_gflops: float
    fdl_matmul_fraction: float
    """llama_fdl's achieved FLOP/s over JAX's own float32 matmul rate, measured in the same run."""
    fdl_compile_s: float
    cpu_ratio: float
    """Median over rounds of HF's process CPU time per step over llama_fdl's: with one thread
    per side (`taskset -c 1`), the comparison that load from other processes does not skew."""


def llama_fdl_step(
    shape: shapes_lib.Shape, dtype: str = "float32", attention: str = "xla"
) -> tuple[Callable[[], None], float]:
    """One blocking train step of llama_fdl at `shape`, and the seconds its first call took."""
    config = shape.llama_config(dtype=dtype, attention_backend=attention)
    model = LlamaTransformer(config)
    mesh = sharding.build_mesh(config.parallel)
    tx, schedule = optim.adamw(10**6, peak_learning_rate=LEARNING_RATE, warmup_steps=0)
    state, shardings = state_lib.init_state(model, tx, shape.sequence_length, 0, mesh, config.parallel)
    step = jit_train_step(model, tx, schedule, mesh, shardings)
    batch = jax.device_put(shapes_lib.synthetic_batch(shape), sharding.batch_sharding(mesh, config.parallel))
    holder = [state]
    no_stop = preemption.StopRequest().flags(preemption.flag_sharding(mesh))  # as the loop passes them

    def run() -> None:
        holder[0], metrics = step(holder[0], batch, no_stop)
        jax.block_until_ready((holder[0], metrics))

    start = time.perf_counter()
    run()
    return run, time.perf_counter() - start


def hf_step(shape: shapes_lib.Shape, dtype: str = "float32") -> Callable[[], None]:
    """One train step of HF transformers' LlamaForCausalLM (sdpa) with torch.optim.AdamW."""
    import torch
    import transformers

    from llama_fdl.model.hf import hf_config_from_llama

    # As many threads as this process may run on, as XLA's pool has (see `taskset -c 1` in
    # docs/PERFORMANCE.md for the one-core comparison).
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    torch.manual_seed(0)
    device = torch_device()
    model = transformers.LlamaForCausalLM._from_config(
        hf_config_from_llama(shape.llama_config()), attn_implementation="sdpa"
    ).to(device)
    model.train()
    opt = torch.optim.AdamW(
        model.parameters(), lr=LEARNING_RATE, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1
    )
    batch = shapes_lib.synthetic_batch(shape)
    inputs = torch.from_numpy(batch["decoder_input_tokens"]).long().to(device)
    targets = torch.from_numpy(batch["decoder_target_tokens"]).long().to(device)
    bf16 = dtype == "bfloat16"

    def run() -> None:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=inputs, use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()  # as llama_fdl's step blocks until its results are ready

    run()
    return run


def torch_device() -> str:
    """torch's CUDA device where JAX runs on a GPU, else its CPU: both sides on the same kind."""
    import torch

    if jax.default_backend() == "gpu":
        if not torch.cuda.is_available():
            raise RuntimeError("JAX runs on a GPU but torch sees no CUDA device; install torch with CUDA.")
        return "cuda"
    return "cpu"


def jax_matmul_flops(n: int = 2048) -> float:
    """FLOP/s of JAX's float32 n x n matmul on the first device (best of 5)."""
    return flops.measure_matmul_flops(jax.devices()[0], n=n)


def torch_matmul_flops(n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of torch's float32 n x n matmul, measured as JAX's is."""
    import torch

    device = torch_device()
    a = torch.ones((n, n), device=device)
    a @ a
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ a
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best


def interleave(
    runs: dict[str, Callable[[], None]], rounds: int, steps: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Per round and side: wall and process CPU seconds per step, over `rounds` rounds of `steps`
    timed steps of each side (the order reversing every round).

    Each side's round starts with one untimed step: the first step after the other framework ran
    is slower on both sides (caches and thread pools taken over; measured at `small`: +75 ms
    of 290 for llama_fdl, +20 ms of 250 for HF), which a training process, running one
    framework, never pays.
    """
    times: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(rounds):
        order = list(runs.items())
        for name, run in order if r % 2 == 0 else order[::-1]:
            run()  # untimed: see the docstring
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(steps):
                run()
            times[name].append((time.perf_counter() - start) / steps)
            cpu[name].append((time.process_time() - start_cpu) / steps)
    return times, cpu


def compare(
    shape: shapes_lib.Shape,
    dtype: str = "float32",
    *,
    rounds: int = 5,
    steps: int = 3,
    matmul_flops: float | None = None,
    attention: str = "xla",
) -> StepComparison:
    """Alternates `rounds` rounds of `steps` timed steps of each side (`interleave`)."""
    fdl, compile_s = llama_fdl_step(shape, dtype, attention)
    hf = hf_step(shape, dtype)
    times, cpu = interleave({"fdl": fdl, "hf": hf}, rounds, steps)
    tokens = shape.tokens_per_step
    fdl_tps = tokens / statistics.median(times["fdl"])
    hf_tps = tokens / statistics.median(times["hf"])
    matmul_flops = matmul_flops or jax_matmul_flops()
    return StepComparison(
        shape=shape.name,
        dtype=dtype,
        num_params=shape.num_params,
        fdl_tokens_per_s=fdl_tps,
        hf_tokens_per_s=hf_tps,
        ratio=statistics.median(h / f for f, h in zip(times["fdl"], times["hf"], strict=True)),
        fdl_gflops=fdl_tps * shape.flops_per_token / 1e9,
        hf_gflops=hf_tps * shape.flops_per_token / 1e9,
        fdl_matmul_fraction=fdl_tps * shape.flops_per_token / matmul_flops,
        fdl_compile_s=compile_s,
        cpu_ratio=statistics.median(h / f for f, h in zip(cpu["fdl"], cpu["hf"], strict=True)),
    )


def table(results: list[StepComparison], shapes: dict[str, shapes_lib.Shape]) -> str:
    """The results as a markdown table."""
    lines = [
        "| shape | params | dtype | llama_fdl tokens/s | HF tokens/s | llama_fdl / HF | "
        "llama_fdl GFLOP/s | HF GFLOP/s | of JAX matmul rate | CPU time HF / llama_fdl |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r.shape} ({shapes[r.shape].describe()}) | {r.num_params / 1e6:.2f}M | {r.dtype} | "
            f"{r.fdl_tokens_per_s:,.0f} | {r.hf_tokens_per_s:,.0f} | **{r.ratio:.2f}x** | "
            f"{r.fdl_gflops:.1f} | {r.hf_gflops:.1f} | {r.fdl_matmul_fraction:.2f} | {r.cpu_ratio:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[StepComparison]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=",".join(shapes_lib.SHAPES), help="comma-separated names")
    parser.add_argument("--dtypes", default="float32", help="comma-separated: float32, bfloat16")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="steps per round and side")
    parser.add_argument("--attention", default="xla", help="llama_fdl's attention_backend (cudnn: GPU)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    known = {**shapes_lib.SHAPES, **{s.name: s for s in (shapes_lib.TOY, shapes_lib.LLAMA_1B)}}
    chosen = [known[name] for name in args.shapes.split(",")]
    jax_rate, torch_rate = jax_matmul_flops(), torch_matmul_flops()
    print(
        f"float32 2048^2 matmul: JAX {jax_rate / 1e9:.1f} GFLOP/s, torch {torch_rate / 1e9:.1f} "
        f"GFLOP/s (JAX/torch {jax_rate / torch_rate:.2f})",
        flush=True,
    )
    results = []
    for shape in chosen:
        for dtype in args.dtypes.split(","):
            results.append(
                compare(
                    shape,
                    dtype,
                    rounds=args.rounds,
                    steps=args.steps,
                    matmul_flops=jax_rate,
                    attention=args.attention,
                )
            )
            print(table(results[-1:], known).splitlines()[-1], flush=True)
    print(table(results, known))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([dataclasses.asdict(r) for r in results], f, indent=2)
    return results


if __name__ == "__main__":
    main()
