"""The train loop: set up, initialise or resume, then step, log, evaluate and checkpoint.

Metrics of step N are fetched from the device only after step N+1 has been dispatched, so the
host never waits on the device just to log. A NaN/Inf loss stops the run before anything after
it is saved; SIGTERM/SIGINT save a checkpoint and return cleanly, on the same step in every
process (see llama_fdl.train.preemption).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import pathlib
import time

import jax
import numpy as np

from llama_fdl import console, generate, sharding
from llama_fdl.train import aot, flops, init_from, preemption
from llama_fdl.train import checkpoint as ckpt
from llama_fdl.train import metrics as metrics_lib
from llama_fdl.train import state as state_lib
from llama_fdl.train.config import Experiment
from llama_fdl.train.step import eval_step


@dataclasses.dataclass
class RunOptions:
    """Runtime-only settings: they change how a run is watched, never what it computes."""

    profile_steps: tuple[int, int] | None = None
    """Trace steps first..last (inclusive) with jax.profiler into RUN/plugins/profile."""
    peak_flops_per_device: float | None = None
    """Peak FLOP/s of one device for MFU; None takes the table's value or measures the CPU."""
    hparams: dict[str, bool | int | float | str] = dataclasses.field(default_factory=dict)
    """More columns for TensorBoard's HParams tab (a sweep adds its point and what it varies)."""


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or Inf and the run was stopped."""


def evaluate(eval_fn, params, eval_sets: list[tuple[str, list[dict]]]) -> dict[str, float]:
    """Loss, accuracy and bits per byte over each fixed eval set, weighted by non-padding tokens.

    Bits per byte are the summed nats over the UTF-8 bytes the target tokens decode to, / ln 2,
    so runs with different vocabularies compare on one axis. Each set's metrics are named with
    its prefix (`eval/`, or `eval/<component>/` for a mixture's components).
    """
    metrics = {}
    for prefix, batches in eval_sets:
        totals = None
        for batch in batches:
            stats = eval_fn(params, batch)
            totals = stats if totals is None else jax.tree.map(lambda a, b: a + b, totals, stats)
        totals = jax.device_get(totals)
        weight = max(float(totals["weight_sum"]), 1.0)
        loss = float(totals["loss_sum"]) / weight
        metrics[f"{prefix}loss"] = loss
        metrics[f"{prefix}perplexity"] = float(np.exp(loss))
        metrics[f"{prefix}accuracy"] = float(totals["correct_sum"]) / weight
        nats_per_byte = float(totals["loss_sum"]) / max(float(totals["byte_sum"]), 1.0)
        metrics[f"{prefix}bits_per_byte"] = nats_per_byte / np.log(2)
    return metrics


def train(
    experiment: Experiment,
    workdir: pathlib.Path,
    config_json: str,
    texts: dict[str, str] | None = None,
    options: RunOptions | None = None,
    stop: preemption.StopRequest | None = None,
) -> dict[str, float]:
    """Runs (or resumes) the experiment in `workdir`; returns the final eval metrics.

    Args:
      experiment: the built experiment.
      workdir: the run directory; a checkpoint in it is resumed from.
      config_json: the experiment's Fiddle JSON, recorded in every checkpoint.
      texts: name -> text for TensorBoard's text tab (the flattened config, its diff, ...),
        written when the run starts from scratch.
      options: runtime-only settings.
      stop: where SIGTERM/SIGINT are recorded; the launcher installs one for the whole process
        (so that a late signal while exiting is harmless). Without one, the loop installs its
        own for its duration.
    """
    options = options or RunOptions()
    # However the run ends, its event file is closed (flushed) when this returns: a run that
    # fails in a long-lived process (a notebook, a test) leaves a complete file, not an open one.
    with contextlib.ExitStack() as cleanup:
        if stop is None:
            stop = preemption.StopRequest()  # a signal during set-up or compilation also ends in a clean save
            stop.install()
            cleanup.callback(stop.uninstall)
        return _train(experiment, workdir, config_json, texts, options, stop, cleanup)


def _train(
    experiment: Experiment,
    workdir: pathlib.Path,
    config_json: str,
    texts: dict[str, str] | None,
    options: RunOptions,
    stop: preemption.StopRequest,
    cleanup: contextlib.ExitStack,
) -> dict[str, float]:
    # --- Set up --------------------------------------------------------------------------
    # Imported here, not with the module: TensorFlow (under seqio) takes seconds, and the
    # launcher imports this module before it knows that the run directory is free.
    startup = console.Startup(say=_say)
    with startup.phase("Importing TensorFlow and seqio"):
        from llama_fdl.data import pipeline

    model, mesh, data, trainer = experiment.model, experiment.mesh, experiment.data, experiment.trainer
    parallel = model.config.parallel
    total_steps = trainer.num_train_steps
    tx, schedule = experiment.optimizer(total_steps)
    batch_sh = sharding.batch_sharding(mesh, parallel)
    flag_sh = preemption.flag_sharding(mesh)

    with startup.phase("Loading the eval batches"):
        local_eval_sets = pipeline.eval_sets(data)
        eval_sets = [
            (s.prefix, [pipeline.to_global(b, batch_sh) for b in s.batches]) for s in local_eval_sets
        ]
    samples = None
    if trainer.sample_every:  # prompts from the source's own validation split (a mixture's whole)
        samples = generate.TrainingSamples(model, data, local_eval_sets[0].batches[0], trainer.seed)
    manager = ckpt.make_manager(workdir / "checkpoints", trainer.checkpoint)
    meta = ckpt.metadata(config_json)

    peak, peak_source = options.peak_flops_per_device, "--peak_flops_per_device"
    if peak is None:
        with startup.phase("Measuring the peak FLOP/s for MFU"):
            peak, peak_source = flops.peak_flops_per_device()
    flops_causal = flops.flops_per_token(model.config, data.sequence_length, causal=True)
    flops_full = flops.flops_per_token(model.config, data.sequence_length, causal=False)

    # --- Initialise or resume ------------------------------------------------------------
    boxed = state_lib.abstract_state(model, tx, data.sequence_length, trainer.seed)
    shardings = state_lib.state_shardings(boxed, mesh, parallel)
    target = state_lib.unboxed_abstract(boxed, shardings)
    with startup.phase("Restoring the newest checkpoint"):
        resumed = ckpt.restore_newest(manager, target, lambda: pipeline.train_iterator(data), _say)
    if resumed is None:
        with startup.phase("Initialising the parameters and the train stream"):
            state = _first_state(experiment, tx, shardings)
            train_iter = pipeline.train_iterator(data)
        writer = cleanup.enter_context(metrics_lib.MetricWriter(str(workdir)).closed_on_exit())
        origin = f"the weights of {trainer.init_from}" if trainer.init_from else "scratch"
        _say(f"Starting {workdir} from {origin}.")
        for name, body in (texts or {}).items():
            writer.text(0, name, body)
    else:
        state, train_iter, latest = resumed
        # tensorboardX's purge_step: TensorBoard drops what a killed run logged after its checkpoint.
        writer = cleanup.enter_context(
            metrics_lib.MetricWriter(str(workdir), purge_step=latest + 1).closed_on_exit()
        )
        _say(f"Resuming {workdir} from the checkpoint at step {latest}.")
    start = int(jax.device_get(state.step))
    profile = options.profile_steps
    if profile and start >= profile[0]:
        _say(f"--profile_steps={profile[0]},{profile[1]}: the run resumes past step {profile[0]}; no trace.")
        options = dataclasses.replace(options, profile_steps=None)
    devices = "1 device" if mesh.size == 1 else f"{mesh.size} devices"
    _say(f"MFU peak: {peak:.3g} FLOP/s per device ({peak_source}), {devices}.")
    layout = sharding.report(mesh, state.params, state.opt_state)
    if jax.process_index() == 0:
        print(layout, flush=True)
        (workdir / "sharding.txt").write_text(layout + "\n")

    # --- Compile -------------------------------------------------------------------------
    step_fn = intermediates_step_fn = None  # a finished run has no step to compile
    if start < total_steps:
        compile_step = functools.partial(
            aot.compile_train_step,
            model,
            tx,
            schedule,
            mesh,
            batch_size=data.batch_size,
            sequence_length=data.sequence_length,
            seed=trainer.seed,
            num_microbatches=trainer.num_microbatches,
            skip_nonfinite=trainer.skip_nonfinite_steps,
        )
        compiled = compile_step()
        _say(compiled.describe())
        step_fn = compiled.step
        if trainer.log_intermediates_every:
            # A second program for the recording steps, compiled now so no step window times it;
            # the other steps keep the first, which computes no intermediates.
            compiled = compile_step(with_intermediates=True)
            _say(f"With intermediates: {compiled.describe()}")
            intermediates_step_fn = compiled.step
    byte_lengths_V = jax.numpy.asarray(data.vocabulary.byte_lengths())
    eval_fn = jax.jit(
        functools.partial(eval_step, model=model, mesh=mesh, byte_lengths_V=byte_lengths_V),
        in_shardings=(shardings.params, batch_sh),
    )
    tokens_per_step = data.batch_size * data.sequence_length

    # --- Loop ----------------------------------------------------------------------------
    averager = metrics_lib.Averager()
    pending = None  # (step number after the update, device metrics) not yet fetched
    window_start, window_steps, skipped = time.perf_counter(), 0, 0
    last_eval: dict[str, float] = {}
    agreed_stop = 0  # the stop signal all processes saw in a step's metrics, 0 for none

    def finish_step(step: int, device_metrics) -> None:
        nonlocal window_start, window_steps, skipped, agreed_stop
        values = jax.device_get(device_metrics)
        agreed_stop = agreed_stop or int(values.pop("stop/signal"))
        intermediates = {k: values.pop(k) for k in list(values) if k.startswith("intermediates/")}
        if intermediates:  # each block's, at this step only: not averaged with other steps
            writer.scalars(step, intermediates)
        if values.pop("train/nonfinite") > 0:
            if not trainer.skip_nonfinite_steps:
                raise NonFiniteLoss(step, float(values["train/loss"]), float(values["opt/grad_norm"]))
            skipped += 1  # the step changed nothing; keep its NaNs out of the averages
        else:
            averager.add(values)
        if step == start + 1:
            window_start = time.perf_counter()  # the first step includes compilation
            startup.first_step_done()
        else:
            window_steps += 1
        if step % trainer.log_every == 0 or step == total_steps:
            means = averager.take()
            means.pop("train/tokens", None)
            if "train/loss" in means:  # absent when every step of the window was skipped
                means["train/perplexity"] = float(np.exp(means["train/loss"]))
            means["train/skipped_steps"] = skipped
            tokens_per_sec = seconds_left = None  # unknown while only the compiling step was seen
            if window_steps:
                step_time = (time.perf_counter() - window_start) / window_steps
                tokens_per_sec = tokens_per_step / step_time
                seconds_left = (total_steps - step) * step_time
                means["perf/step_time_s"] = step_time
                means["perf/tokens_per_sec"] = tokens_per_sec
                means["perf/mfu"] = flops.mfu(tokens_per_sec, flops_causal, mesh.size, peak)
                means["perf/mfu_noncausal_attention"] = flops.mfu(tokens_per_sec, flops_full, mesh.size, peak)
            writer.scalars(step, means)
            metrics_lib.console(
                step, total_steps, means.get("train/loss", np.nan), tokens_per_sec, seconds_left
            )
            window_start, window_steps = time.perf_counter(), 0

    try:
        for step in range(start, total_steps):
            done = step + 1
            if options.profile_steps and done == options.profile_steps[0]:
                jax.profiler.start_trace(str(workdir))
            batch = pipeline.to_global(pipeline.next_batch(train_iter), batch_sh)
            every = trainer.log_intermediates_every
            recording = every and done % every == 0
            state, device_metrics = (intermediates_step_fn if recording else step_fn)(
                state, batch, stop.flags(flag_sh)
            )
            if pending is not None:
                finish_step(*pending)
            pending = (done, device_metrics)
            if options.profile_steps and done == options.profile_steps[1]:
                jax.block_until_ready(state)
                jax.profiler.stop_trace()
                _say(f"Profiled steps {options.profile_steps[0]}-{done}: {_newest_trace(workdir)}")
            evaluating = done % trainer.eval_every == 0 or done == total_steps
            saving = done % trainer.checkpoint.every_steps == 0 or done == total_steps
            sampling = samples is not None and done % trainer.sample_every == 0
            # Every process reads the same metrics at the same points, so `agreed_stop` turns
            # non-zero at the same step everywhere: they stop, and save, together.
            if evaluating or saving or sampling or agreed_stop:
                finish_step(*pending)  # a NaN must be caught before anything is saved
                pending = None
            if evaluating:
                last_eval = evaluate(eval_fn, state.params, eval_sets)
                writer.scalars(done, last_eval)
                _say(_eval_line(done, last_eval))
            if sampling:
                writer.markdown(done, "samples", samples.markdown(state.params))
            if saving or agreed_stop:
                ckpt.save(manager, done, state, train_iter, meta, force=True)
            if agreed_stop:
                name = preemption.signal_name(agreed_stop)
                _say(f"{name}: saved the checkpoint at step {done}; rerun to resume.")
                break
            if pending is None:  # eval, samples and saves are not train throughput
                window_start, window_steps = time.perf_counter(), 0
        if pending is not None:
            finish_step(*pending)
    except NonFiniteLoss as e:
        ckpt.wait(manager)
        good = manager.latest_step()
        last_good = (
            f"the last good checkpoint is step {good}" if good is not None else "no checkpoint was saved"
        )
        step, loss, grad_norm = e.args
        raise NonFiniteLoss(
            f"Step {step} gave a non-finite loss, gradient or update (loss {loss}, gradient norm "
            f"{grad_norm}); stopped without saving it, so {last_good}. "
            f"Lower optimizer.peak_learning_rate, or set trainer.skip_nonfinite_steps=True to skip "
            f"such steps."
        ) from None
    finally:
        try:
            ckpt.wait(manager)
        finally:
            manager.close()

    # --- Finish --------------------------------------------------------------------------
    if start >= total_steps:
        last_eval = evaluate(eval_fn, state.params, eval_sets)
        _say(f"Nothing to do: {workdir} already reached step {start}.")
        _say(_eval_line(start, last_eval))
    if last_eval and int(jax.device_get(state.step)) == total_steps:
        hparams = {**_hparams(experiment), **options.hparams}
        writer.hparams(hparams, {"hparams/eval_loss": last_eval["eval/loss"]}, total_steps)
    return last_eval  # the writer is closed as `cleanup` ends (MetricWriter.closed_on_exit)


def _first_state(experiment: Experiment, tx, shardings) -> state_lib.TrainState:
    """Random parameters, or trainer.init_from's, with a fresh optimizer state."""
    model, trainer = experiment.model, experiment.trainer
    if trainer.init_from:
        params = init_from.load(trainer.init_from, model.config, shardings.params)
        return state_lib.state_from_params(params, tx, trainer.seed, shardings)
    parallel = model.config.parallel
    seq_len = experiment.data.sequence_length
    return state_lib.init_state(model, tx, seq_len, trainer.seed, experiment.mesh, parallel)[0]


def _newest_trace(workdir: pathlib.Path) -> pathlib.Path | None:
    """The trace jax.profiler just wrote: RUN/plugins/profile/<time>/, where TensorBoard looks."""
    traces = sorted((workdir / "plugins" / "profile").glob("*"), key=lambda p: p.stat().st_mtime)
    return traces[-1] if traces else None


def _eval_line(step: int, metrics: dict[str, float]) -> str:
    return (
        f"eval at step {step}: loss {metrics['eval/loss']:.4f}, {metrics['eval/bits_per_byte']:.4f} bits/byte"
    )


def _say(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)


def _hparams(experiment: Experiment) -> dict[str, object]:
    """The main hyperparameters, flat, for TensorBoard's HParams tab."""
    config = experiment.model.config
    hparams: dict[str, object] = {
        f"model.{k}": v
        for k, v in dataclasses.asdict(config).items()
        if isinstance(v, bool | int | float | str)
    }
    hparams.update(
        {
            "data.batch_size": experiment.data.batch_size,
            "data.sequence_length": experiment.data.sequence_length,
            "trainer.num_train_steps": experiment.trainer.num_train_steps,
        }
    )
    # A partial's signature carries its bound values as defaults: set and default values alike.
    for name, param in inspect.signature(experiment.optimizer).parameters.items():
        if isinstance(param.default, int | float) and not isinstance(param.default, bool):
            hparams[f"optimizer.{name}"] = param.default
    return hparams
