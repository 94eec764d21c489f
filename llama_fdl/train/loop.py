"""The train loop: set up, initialise or resume, then step, log, evaluate and checkpoint.

Metrics of step N are fetched from the device only after step N+1 has been dispatched, so the
host never waits on the device just to log.
"""

from __future__ import annotations

import functools
import pathlib
import time

import jax
import numpy as np

from llama_fdl import sharding
from llama_fdl.data import pipeline
from llama_fdl.train import checkpoint as ckpt
from llama_fdl.train import metrics as metrics_lib
from llama_fdl.train import state as state_lib
from llama_fdl.train.config import Experiment
from llama_fdl.train.step import eval_step, train_step


def evaluate(eval_fn, params, batches: list[dict]) -> dict[str, float]:
    """Loss and accuracy over the fixed eval batches, weighted by non-padding tokens."""
    totals = None
    for batch in batches:
        stats = eval_fn(params, batch)
        totals = stats if totals is None else jax.tree.map(lambda a, b: a + b, totals, stats)
    totals = jax.device_get(totals)
    weight = max(float(totals["weight_sum"]), 1.0)
    loss = float(totals["loss_sum"]) / weight
    return {
        "eval/loss": loss,
        "eval/perplexity": float(np.exp(loss)),
        "eval/accuracy": float(totals["correct_sum"]) / weight,
    }


def train(
    experiment: Experiment,
    workdir: pathlib.Path,
    config_json: str,
    texts: dict[str, str] | None = None,
) -> dict[str, float]:
    """Runs (or resumes) the experiment in `workdir`; returns the final eval metrics.

    Args:
      experiment: the built experiment.
      workdir: the run directory; a checkpoint in it is resumed from.
      config_json: the experiment's Fiddle JSON, recorded in every checkpoint.
      texts: name -> text for TensorBoard's text tab (the flattened config, its diff, ...),
        written when the run starts from scratch.
    """
    # --- Set up --------------------------------------------------------------------------
    experiment.validate()
    model, mesh, data, trainer = experiment.model, experiment.mesh, experiment.data, experiment.trainer
    parallel = model.config.parallel
    total_steps = trainer.num_train_steps
    tx, schedule = experiment.optimizer(total_steps)
    batch_sh = sharding.batch_sharding(mesh, parallel)

    train_iter = pipeline.train_iterator(data)
    eval_batches = [pipeline.to_global(b, batch_sh) for b in pipeline.eval_batches(data)]
    writer = metrics_lib.MetricWriter(str(workdir))
    manager = ckpt.make_manager(workdir / "checkpoints", trainer.checkpoint)
    meta = ckpt.metadata(config_json)

    # --- Initialise or resume ------------------------------------------------------------
    boxed = state_lib.abstract_state(model, tx, data.sequence_length, trainer.seed)
    shardings = state_lib.state_shardings(boxed, mesh, parallel)
    latest = manager.latest_step()
    if latest is None:
        state, _ = state_lib.init_state(model, tx, data.sequence_length, trainer.seed, mesh, parallel)
        print(f"Starting {workdir} from scratch.", flush=True)
        for name, body in (texts or {}).items():
            writer.text(0, name, body)
    else:
        target = state_lib.unboxed_abstract(boxed, shardings)
        state = ckpt.restore(manager, latest, target, train_iter)
        print(f"Resuming {workdir} from the checkpoint at step {latest}.", flush=True)
    start = int(jax.device_get(state.step))
    layout = sharding.report(mesh, state.params, state.opt_state)
    if jax.process_index() == 0:
        print(layout, flush=True)
        (workdir / "sharding.txt").write_text(layout + "\n")

    # --- Compile -------------------------------------------------------------------------
    step_fn = jax.jit(
        functools.partial(
            train_step,
            model=model,
            tx=tx,
            schedule=schedule,
            mesh=mesh,
            num_microbatches=trainer.num_microbatches,
        ),
        in_shardings=(shardings, batch_sh),
        out_shardings=(shardings, sharding.replicated(mesh)),
        donate_argnums=0,
    )
    eval_fn = jax.jit(
        functools.partial(eval_step, model=model, mesh=mesh), in_shardings=(shardings.params, batch_sh)
    )
    tokens_per_step = data.batch_size * data.sequence_length

    # --- Loop ----------------------------------------------------------------------------
    averager = metrics_lib.Averager()
    pending = None  # (step number after the update, device metrics) not yet fetched
    window_start, window_steps = time.perf_counter(), 0
    last_eval: dict[str, float] = {}

    def finish_step(step: int, device_metrics) -> None:
        nonlocal window_start, window_steps
        averager.add(jax.device_get(device_metrics))
        if step == start + 1:
            # The first step includes compilation; time throughput from its end.
            window_start = time.perf_counter()
        else:
            window_steps += 1
        if step % trainer.log_every == 0 or step == total_steps:
            elapsed = time.perf_counter() - window_start
            means = averager.take()
            step_time = elapsed / max(window_steps, 1)
            tokens_per_sec = tokens_per_step / step_time
            means["perf/step_time_s"] = step_time
            means["perf/tokens_per_sec"] = tokens_per_sec
            means["train/perplexity"] = float(np.exp(means["train/loss"]))
            means.pop("train/tokens", None)
            writer.scalars(step, means)
            metrics_lib.console(
                step, total_steps, means["train/loss"], tokens_per_sec, (total_steps - step) * step_time
            )
            window_start, window_steps = time.perf_counter(), 0

    for step in range(start, total_steps):
        batch = pipeline.to_global(next(train_iter), batch_sh)
        state, device_metrics = step_fn(state, batch)
        if pending is not None:
            finish_step(*pending)
        pending = (step + 1, device_metrics)
        done = step + 1
        if done % trainer.eval_every == 0 or done == total_steps:
            finish_step(*pending)
            pending = None
            last_eval = evaluate(eval_fn, state.params, eval_batches)
            writer.scalars(done, last_eval)
            if jax.process_index() == 0:
                print(f"eval at step {done}: loss {last_eval['eval/loss']:.4f}", flush=True)
        if done % trainer.checkpoint.every_steps == 0 or done == total_steps:
            if pending is not None:
                finish_step(*pending)
                pending = None
            ckpt.save(manager, done, state, train_iter, meta, force=True)
        if pending is None:  # eval and saves are not train throughput
            window_start, window_steps = time.perf_counter(), 0
    if pending is not None:
        finish_step(*pending)

    # --- Finish --------------------------------------------------------------------------
    if start >= total_steps:
        last_eval = evaluate(eval_fn, state.params, eval_batches)
        print(f"Nothing to do: {workdir} already reached step {start}.", flush=True)
    manager.wait_until_finished()
    manager.close()
    writer.flush()
    writer.close()
    return last_eval
