"""Train one experiment: `llama-fdl train --fdl_config=experiments.small [overrides]`.

Overrides are applied in this order, whatever their order on the command line:
  1. the base graph: --fdl_config=experiments.NAME or --fdl_config_file=RUN/config.json;
  2. fiddlers, in the order given: --fiddler=NAME or --fiddler='NAME(ARGS)';
  3. tags: --fdl_tag.NAME=VALUE;
  4. values, in the order given: --fdl_set=PATH=VALUE or the shorthand --fdl.PATH=VALUE.
--fdl_help lists the experiments, fiddlers, tags and settings. Runtime-only settings (where to
write, tracebacks, profiling) are plain flags; everything that defines the experiment is in the
graph and saved to RUN/config.json, with what the overrides changed in RUN/config_diff.txt.
`python launch/launch.py` runs this command from a checkout.
"""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Sequence

from absl import app, flags

import experiments
from llama_fdl import (  # distributed defines --num_processes, ...
    commands,
    compilation_cache,
    distributed,
    runner,
)
from llama_fdl.cli import diff, library
from llama_fdl.cli import flags as fdl_flags
from llama_fdl.train import checkpoint as ckpt
from llama_fdl.train import preemption

FLAG_MODULES = ("llama_fdl.distributed",)
"""Other modules whose flags this command reads (for `llama-fdl help train`)."""

_START_ELSEWHERE = flags.DEFINE_bool(
    "start_elsewhere", False, "If --workdir holds a different experiment, run in the next free WORKDIR-N."
)
_PROFILE_STEPS = flags.DEFINE_list(
    "profile_steps", None, "FIRST,LAST: trace these steps with jax.profiler (TensorBoard's profile tab)."
)
_PEAK_FLOPS = flags.DEFINE_float(
    "peak_flops_per_device",
    None,
    "Peak FLOP/s of one device for MFU; default: known table, or measured on CPU.",
)
_DRY_RUN = flags.DEFINE_bool(
    "dry_run",
    False,
    "Check the experiment and compile its train step for these devices, then print parameters, "
    "FLOPs per token and memory per device and whether it fits; train nothing, write nothing.",
)
FLAGS = flags.FLAGS
# Errors whose message says it all; anything else is a bug and keeps its traceback.
FOR_PEOPLE = (
    ValueError,
    TypeError,
    FileNotFoundError,
    runner.RunError,
    ckpt.CheckpointWriteError,
    ckpt.UnreadableCheckpoints,
)


def parse_flags(argv: list[str]) -> list[str]:
    return fdl_flags.parse(argv)


def _profile_steps() -> tuple[int, int] | None:
    if not _PROFILE_STEPS.value:
        return None
    try:
        first, last = (int(v) for v in _PROFILE_STEPS.value)
    except ValueError:
        raise ValueError(
            f"--profile_steps={','.join(_PROFILE_STEPS.value)} must be two step numbers FIRST,LAST."
        ) from None
    if not 1 <= first <= last:
        raise ValueError(f"--profile_steps={first},{last} needs 1 <= FIRST <= LAST.")
    return first, last


def _check_profile_steps(profile: tuple[int, int] | None, num_train_steps: int) -> None:
    """Steps past the end of the run would never be traced: say so now, not after the run."""
    if profile is not None and profile[1] > num_train_steps:
        raise ValueError(
            f"--profile_steps={profile[0]},{profile[1]} reaches past the run's last step "
            f"{num_train_steps} (trainer.num_train_steps); trace steps within 1..{num_train_steps}."
        )


def main(argv: list[str], typed: Sequence[str]) -> None:
    """Runs the experiment the flags describe; `typed` is the command line as typed (for labels)."""
    commands.quiet_logs()
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}; flags take the form --name=value.")
    for_people = FOR_PEOPLE
    try:
        distributed.initialize()  # first: jax.distributed must start before any backend does
        # After jax.distributed (whose own SIGTERM handler this replaces) and for the whole
        # process: a signal arriving while the run sets up, saves or exits is then recorded, not fatal.
        stop = preemption.StopRequest()
        stop.install()
        if fdl_flags.FDL_HELP.value and not (fdl_flags.FDL_CONFIG.value or fdl_flags.FDL_CONFIG_FILE.value):
            print(library.help_text(experiments))
            return
        profile = _profile_steps()
        applied, against = fdl_flags.graph(typed, experiments)
        if fdl_flags.FDL_HELP.value:
            print(library.help_text(experiments, applied.cfg))
            return
        name = runner.experiment_name(fdl_flags.FDL_CONFIG.value, fdl_flags.FDL_CONFIG_FILE.value)
        workdir = pathlib.Path(fdl_flags.WORKDIR.value or f"runs/{name}")
        last = None if _DRY_RUN.value else runner.finished(applied.cfg, workdir)
        if last is not None:  # before the checks: this graph passed them when the run started
            print(f"Nothing to do: {workdir} already reached step {last}; its evals are in TensorBoard.")
            return
        config_diff = diff.as_text(applied.base, applied.cfg, applied.sources, against=against)
        config_code = diff.as_code(applied.base, applied.cfg, base_flag=fdl_flags.base_flag())
        experiment = runner.check(applied.cfg)
        _check_profile_steps(profile, experiment.trainer.num_train_steps)
        if fdl_flags.COMPILATION_CACHE.value:
            compilation_cache.enable(fdl_flags.COMPILATION_CACHE_DIR.value)
        if _DRY_RUN.value:
            report = runner.dry_run(experiment)
            print(report.text())
            if report.fits is False:
                raise runner.RunError(
                    "The train step does not fit in a device's memory; spread it over more devices "
                    "(model.config.parallel.fsdp_axis_size), or lower the memory it needs "
                    "(model.config.parallel.remat, trainer.num_microbatches, data.batch_size)."
                )
            return
        # The loop brings in TensorFlow: import it only once the experiment has passed its checks.
        from llama_fdl.train import loop

        for_people += (loop.NonFiniteLoss,)
        options = loop.RunOptions(profile_steps=profile, peak_flops_per_device=_PEAK_FLOPS.value)
        runner.run(
            applied.cfg,
            workdir,
            options,
            start_elsewhere=_START_ELSEWHERE.value,
            config_diff=config_diff,
            config_code=config_code,
            experiment=experiment,
            stop=stop,
        )
    except for_people as e:
        if fdl_flags.TRACEBACK.value:
            raise
        print(f"error: {runner.one_line(e)} (--traceback shows where)", file=sys.stderr)
        sys.exit(1)
