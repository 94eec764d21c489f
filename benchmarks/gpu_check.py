"""llama_1b's train step on one accelerator: tokens/s, MFU, and the dry run's memory estimate.

The model is `experiments.llama_1b`'s, read from its golden file (tests/golden/llama_1b.txt) so
that this script needs neither Fiddle nor seqio nor TensorFlow; it trains in bfloat16 with cuDNN
attention on synthetic tokens, with the train loop's own compiled step. The memory estimate is
XLA's analysis of that very program (what `--dry_run` prints), compared with the device's
measured peak (`memory_stats()['peak_bytes_in_use']`). Run by benchmarks/gpu_check.sh; on a CPU,
`--smoke` runs a toy model through the same path.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import pathlib
import resource
import sys
import time

import jax

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import shapes as shapes_lib  # noqa: E402
from llama_fdl import optim, sharding  # noqa: E402
from llama_fdl.data.vocabulary import BYTE_VOCAB_SIZE  # noqa: E402 -- numpy only, no seqio
from llama_fdl.model import LlamaConfig, LlamaTransformer, num_params  # noqa: E402
from llama_fdl.train import aot, flops, preemption  # noqa: E402
from llama_fdl.train import state as state_lib  # noqa: E402

GOLDEN = REPO / "tests" / "golden" / "llama_1b.txt"
# Dense bfloat16 peaks from NVIDIA's datasheets (no sparsity); llama_fdl.train.flops has the rest.
DATASHEET = "H100 SXM / H200 SXM 989 TFLOP/s, H100 NVL / H200 NVL 835, H100 PCIe 756"


def llama_1b_config(**fields) -> LlamaConfig:
    """LlamaConfig of experiments.llama_1b, from the `model.config.*` lines of its golden file."""
    lines = dict(line.partition(" = ")[::2] for line in GOLDEN.read_text().splitlines())
    values = {}
    for path, value in lines.items():
        name = path.removeprefix("model.config.")
        if path.startswith("model.config.") and "." not in name and name != "parallel":
            value = value.split("  #")[0]
            if value == "Config[vocabulary_size]":  # derived from data.vocabulary: bytes, or not
                spm = lines["model.config.vocab_size.vocabulary.sentencepiece_model"].split("  #")[0]
                if ast.literal_eval(spm):
                    raise ValueError(f"llama_1b now uses the SentencePiece model {spm}; pass vocab_size=N.")
                values[name] = BYTE_VOCAB_SIZE
            else:
                values[name] = ast.literal_eval(value)
    return LlamaConfig(**{**values, **fields})


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="toy model, xla attention (runs on CPU)")
    parser.add_argument("--batch_size", type=int, default=8, help="llama_1b's is 32 over 8+ devices")
    parser.add_argument("--sequence_length", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", default=".", help="directory for gpu_check.json")
    args = parser.parse_args(argv)

    if args.smoke:
        toy = shapes_lib.TOY
        config = toy.llama_config(dtype="bfloat16")
        batch_size, seq_len = toy.batch_size, toy.sequence_length
    else:
        config = llama_1b_config(attention_backend="cudnn")
        batch_size, seq_len = args.batch_size, args.sequence_length
    model = LlamaTransformer(config)
    mesh = sharding.build_mesh(config.parallel, jax.devices()[:1])
    tx, schedule = optim.adamw(10**6, warmup_steps=0)
    device = jax.devices()[0]
    print(f"{device.device_kind} ({jax.default_backend()}), jax {jax.__version__}", flush=True)

    compiled = aot.compile_train_step(
        model, tx, schedule, mesh, batch_size=batch_size, sequence_length=seq_len
    )
    print(compiled.describe(), flush=True)
    memory = compiled.step.memory_analysis()
    estimate = (
        memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        - memory.alias_size_in_bytes
        + memory.temp_size_in_bytes
        + memory.generated_code_size_in_bytes
    )
    limit, limit_source = aot.device_memory(device)
    print(f"dry-run estimate: {estimate / 2**30:.2f} GiB per device", flush=True)  # before any OOM

    state, _ = state_lib.init_state(model, tx, seq_len, 0, mesh, config.parallel)
    shape = dataclasses.replace(shapes_lib.TOY, vocab_size=config.vocab_size, batch_size=batch_size)
    shape = dataclasses.replace(shape, sequence_length=seq_len)
    batch = jax.device_put(shapes_lib.synthetic_batch(shape), sharding.batch_sharding(mesh, config.parallel))
    no_stop = preemption.StopRequest().flags(preemption.flag_sharding(mesh))  # as the loop passes them
    state, metrics = compiled.step(state, batch, no_stop)  # warm-up
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(args.steps):
        state, metrics = compiled.step(state, batch, no_stop)
    jax.block_until_ready((state, metrics))
    step_s = (time.perf_counter() - start) / args.steps
    tokens_per_s = batch_size * seq_len / step_s
    per_token = flops.flops_per_token(config, seq_len, causal=True)
    peak_flops, peak_source = flops.peak_flops_per_device(device)
    stats = device.memory_stats() or {}
    measured = stats.get("peak_bytes_in_use")
    result = {
        "device": device.device_kind,
        "backend": jax.default_backend(),
        "jax": jax.__version__,
        "model": "toy" if args.smoke else "experiments.llama_1b",
        "num_params": num_params(config),
        "dtype": config.dtype,
        "attention_backend": config.attention_backend,
        "batch": f"{batch_size} x {seq_len}",
        "trace_s": compiled.trace_seconds,
        "compile_s": compiled.seconds,
        "step_s": step_s,
        "tokens_per_s": tokens_per_s,
        "model_tflops_per_s": tokens_per_s * per_token / 1e12,
        "mfu": tokens_per_s * per_token / peak_flops,
        "peak_flops": peak_flops,
        "peak_flops_source": peak_source,
        "dry_run_estimate_bytes": estimate,
        "measured_peak_bytes": measured,
        "estimate_over_measured": estimate / measured if measured else None,
        "device_memory_bytes": limit,
        "device_memory_source": limit_source,
        "host_max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "loss": float(metrics["train/loss"]),
    }
    pathlib.Path(args.out).mkdir(parents=True, exist_ok=True)
    (pathlib.Path(args.out) / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
    gib = 2**30
    print(
        f"{result['model']} ({result['num_params'] / 1e9:.2f}B params), {config.dtype}, "
        f"{config.attention_backend} attention, batch {result['batch']}: {step_s * 1e3:.0f} ms/step, "
        f"{tokens_per_s:,.0f} tokens/s, {result['model_tflops_per_s']:.1f} TFLOP/s, "
        f"MFU {result['mfu']:.3f} of {peak_flops / 1e12:.0f} TFLOP/s ({peak_source}; {DATASHEET})"
    )
    print(
        f"memory: dry-run estimate {estimate / gib:.2f} GiB, measured peak "
        + (f"{measured / gib:.2f} GiB (estimate/measured {estimate / measured:.2f})" if measured else "n/a")
        + (f", device has {limit / gib:.1f} GiB" if limit else "")
    )
    print(f"loss after {args.steps + 1} steps: {result['loss']:.4f}")
    return result


if __name__ == "__main__":
    main()
