"""What the stop agreement costs: the train step with and without its per-device stop flags.

Every train step takes each device's stop signal and returns their maximum, so that every process
stops on the same step (llama_fdl.train.preemption). This measures that step against the same
step without the flags, alternating blocks of steps in one process, on the same batch and state
shapes, and prints tokens/s of each and their ratio (1.00 = free).

    python benchmarks/stop_agreement.py                       # experiments.small, 1 CPU device
    python benchmarks/stop_agreement.py --devices=8 --fsdp=8  # 8 simulated devices, FSDP

Batches are random tokens (no data pipeline: the step is what is measured).
"""

from __future__ import annotations

import argparse
import functools
import os
import pathlib
import statistics
import sys
import time

_REPO = pathlib.Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--experiment", default="small", help="An experiment of the library.")
    parser.add_argument("--devices", type=int, default=1, help="Simulated CPU devices.")
    parser.add_argument("--fsdp", type=int, default=1, help="fsdp_axis_size (the rest is data).")
    parser.add_argument("--steps", type=int, default=20, help="Steps per timed block.")
    parser.add_argument("--repeats", type=int, default=5, help="Blocks of each kind, alternated.")
    args = parser.parse_args()
    if args.devices > 1:
        os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
    sys.path.insert(0, str(_REPO))

    import fiddle as fdl
    import jax
    import numpy as np

    import experiments
    from llama_fdl import sharding
    from llama_fdl.train import preemption
    from llama_fdl.train import state as state_lib
    from llama_fdl.train.step import train_step

    cfg = getattr(experiments, args.experiment)()
    cfg.model.config.parallel.fsdp_axis_size = args.fsdp
    exp = fdl.build(cfg)
    parallel, mesh = exp.model.config.parallel, exp.mesh
    tx, schedule = exp.optimizer(exp.trainer.num_train_steps)
    state, shardings = state_lib.init_state(
        exp.model, tx, exp.data.sequence_length, exp.trainer.seed, mesh, parallel
    )
    rows, length = exp.data.batch_size, exp.data.sequence_length
    tokens = np.random.default_rng(0).integers(3, exp.model.config.vocab_size, (rows, length + 1))
    local = {
        "decoder_input_tokens": tokens[:, :-1].astype(np.int32),
        "decoder_target_tokens": tokens[:, 1:].astype(np.int32),
        "decoder_loss_weights": np.ones((rows, length), np.int32),
        "decoder_segment_ids": np.ones((rows, length), np.int32),
        "decoder_positions": np.broadcast_to(np.arange(length, dtype=np.int32), (rows, length)),
    }
    batch_sh, flag_sh = sharding.batch_sharding(mesh, parallel), preemption.flag_sharding(mesh)
    batch = {k: jax.make_array_from_process_local_data(batch_sh, v) for k, v in local.items()}
    stop = preemption.StopRequest()
    step = functools.partial(train_step, model=exp.model, tx=tx, schedule=schedule, mesh=mesh)
    out = (shardings, sharding.replicated(mesh))
    steps = {
        "without flags": jax.jit(
            lambda s, b: step(s, b), in_shardings=(shardings, batch_sh), out_shardings=out, donate_argnums=0
        ),
        "with flags": jax.jit(
            lambda s, b, f: step(s, b, f),
            in_shardings=(shardings, batch_sh, flag_sh),
            out_shardings=out,
            donate_argnums=0,
        ),
    }

    def block(name: str):
        nonlocal state
        start = time.perf_counter()
        for _ in range(args.steps):
            if name == "with flags":
                state, metrics = steps[name](state, batch, stop.flags(flag_sh))
            else:
                state, metrics = steps[name](state, batch)
            jax.device_get(metrics)  # as the loop does, one step late or not: the host waits here
        return rows * length * args.steps / (time.perf_counter() - start)

    for name in steps:
        block(name)  # compile and warm up
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name in steps:
            rates[name].append(block(name))
    shape = ", ".join(f"{k}={v}" for k, v in mesh.shape.items())
    print(f"{args.experiment} on {mesh.size} device(s) ({shape}); {args.repeats} x {args.steps} steps each")
    for name, values in rates.items():
        low, high = min(values), max(values)
        median = statistics.median(values)
        print(f"  {name:>14}: {median:,.0f} tokens/s (median; min {low:,.0f}, max {high:,.0f})")
    ratio = statistics.median(rates["with flags"]) / statistics.median(rates["without flags"])
    print(f"  ratio with/without: {ratio:.3f}")


if __name__ == "__main__":
    main()
