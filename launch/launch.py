"""Launch an experiment: `python launch/launch.py --fdl_config=experiments.small [overrides]`.

Overrides are applied in this order, whatever their order on the command line:
  1. the base graph: --fdl_config=experiments.NAME or --fdl_config_file=RUN/config.json;
  2. fiddlers, in the order given: --fiddler=NAME or --fiddler='NAME(ARGS)';
  3. tags: --fdl_tag.NAME=VALUE;
  4. values, in the order given: --fdl_set=PATH=VALUE or the shorthand --fdl.PATH=VALUE.
--fdl_help lists the experiments, fiddlers, tags and settings. Runtime-only settings (where to
write, tracebacks, profiling) are plain flags; everything that defines the experiment is in the graph and
saved to RUN/config.json, with what the overrides changed in RUN/config_diff.txt.
"""

from __future__ import annotations

import os
import pathlib
import sys

# TensorFlow (under seqio) logs its CUDA and oneDNN probing at start-up; keep warnings and errors.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_REPO = pathlib.Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from llama_fdl import host_memory  # noqa: E402

host_memory.reexec_with_huge_pages()  # first: glibc reads the malloc tunable only at start-up

from absl import app, flags, logging  # noqa: E402
from fiddle import absl_flags  # noqa: E402, F401  (defines --fdl_config, --fdl_set, --fiddler, ...)

import experiments  # noqa: E402
from llama_fdl import compilation_cache, distributed, runner  # noqa: E402  (distributed: --num_processes, ...)
from llama_fdl.cli import ConfigError, diff, library, overrides, safe_load  # noqa: E402
from llama_fdl.train import checkpoint as ckpt  # noqa: E402

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory; default runs/<experiment name>. Re-running resumes it."
)
_START_ELSEWHERE = flags.DEFINE_bool(
    "start_elsewhere", False, "If --workdir holds a different experiment, run in the next free WORKDIR-N."
)
_TRACEBACK = flags.DEFINE_bool("traceback", False, "Show the full traceback of an error.")
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
_CACHE = flags.DEFINE_bool(
    "compilation_cache", True, "Save compiled programs in --compilation_cache_dir and reuse them."
)
_CACHE_DIR = flags.DEFINE_string(
    "compilation_cache_dir",
    str(compilation_cache.default_dir()),
    "Directory of JAX's persistent compilation cache.",
)
FLAGS = flags.FLAGS


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


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with the --fdl./--fdl_tag. shorthands, and its errors on one line."""
    try:
        return FLAGS(overrides.rewrite_shorthands(argv))
    except (flags.Error, ConfigError) as e:
        print(f"error: {e} (--helpfull lists every flag)", file=sys.stderr)
        sys.exit(2)


def _graph(argv: list[str]) -> tuple[overrides.Applied, str]:
    """The experiment graph the flags describe, and what it is compared against in the diff."""
    if FLAGS.fdl_config and FLAGS.fdl_config_file:
        raise ConfigError("Pass either --fdl_config or --fdl_config_file, not both.")
    if FLAGS.fdl_config:
        cfg, against = library.experiment(FLAGS.fdl_config, experiments), FLAGS.fdl_config
    elif FLAGS.fdl_config_file:
        cfg, against = safe_load.load(FLAGS.fdl_config_file), str(FLAGS.fdl_config_file)
    else:
        raise ConfigError(
            "Name an experiment: --fdl_config=experiments.NAME or --fdl_config_file=RUN/config.json "
            "(--fdl_help lists the experiments)."
        )
    todo = overrides.from_flags(FLAGS.fiddler, FLAGS.fdl_tags_set, FLAGS.fdl_set, argv)
    return overrides.apply(cfg, todo, experiments), against


def main(argv: list[str]) -> None:
    if not FLAGS["verbosity"].present:
        # seqio and Orbax log every step of their set-up at INFO; keep the console for the run.
        logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}; flags take the form --name=value.")
    # Errors whose message says it all; anything else is a bug and keeps its traceback.
    for_people = (ValueError, TypeError, FileNotFoundError, runner.RunError, ckpt.CheckpointWriteError)
    try:
        distributed.initialize()  # first: jax.distributed must start before any backend does
        if FLAGS.fdl_help and not (FLAGS.fdl_config or FLAGS.fdl_config_file):
            print(library.help_text(experiments))
            return
        profile = _profile_steps()
        applied, against = _graph(sys.argv[1:])
        if FLAGS.fdl_help:
            print(library.help_text(experiments, applied.cfg))
            return
        config_diff = diff.as_text(applied.base, applied.cfg, applied.sources, against=against)
        experiment = runner.check(applied.cfg)
        if _CACHE.value:
            compilation_cache.enable(_CACHE_DIR.value)
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
        name = runner.experiment_name(FLAGS.fdl_config, FLAGS.fdl_config_file)
        workdir = pathlib.Path(_WORKDIR.value or f"runs/{name}")
        runner.run(
            applied.cfg,
            workdir,
            options,
            start_elsewhere=_START_ELSEWHERE.value,
            config_diff=config_diff,
            experiment=experiment,
        )
    except for_people as e:
        if _TRACEBACK.value:
            raise
        print(f"error: {runner.one_line(e)} (--traceback shows where)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
