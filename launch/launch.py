"""Launch an experiment: `python launch/launch.py --fdl_config=experiments.small [overrides]`.

Overrides are applied in this order, whatever their order on the command line:
  1. the base graph: --fdl_config=experiments.NAME or --fdl_config_file=RUN/config.json;
  2. fiddlers, in the order given: --fiddler=NAME;
  3. tags: --fdl_tag.NAME=VALUE;
  4. values, in the order given: --fdl_set=PATH=VALUE or the shorthand --fdl.PATH=VALUE.
Runtime-only settings (where to write, tracebacks) are plain flags; everything that defines the
experiment is in the graph and saved to RUN/config.json.
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

from absl import app, flags, logging  # noqa: E402
from fiddle import absl_flags as fdl_flags  # noqa: E402  (defines --fdl_config, --fdl_set, ...)

import experiments  # noqa: E402
from llama_fdl import distributed, runner  # noqa: E402  (distributed defines --num_processes, ...)
from llama_fdl.train import checkpoint as ckpt  # noqa: E402
from llama_fdl.train import loop  # noqa: E402

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


def _run_options() -> loop.RunOptions:
    profile = None
    if _PROFILE_STEPS.value:
        try:
            first, last = (int(v) for v in _PROFILE_STEPS.value)
        except ValueError:
            raise ValueError(
                f"--profile_steps={','.join(_PROFILE_STEPS.value)} must be two step numbers FIRST,LAST."
            ) from None
        if not 1 <= first <= last:
            raise ValueError(f"--profile_steps={first},{last} needs 1 <= FIRST <= LAST.")
        profile = (first, last)
    return loop.RunOptions(profile_steps=profile, peak_flops_per_device=_PEAK_FLOPS.value)


def main(argv: list[str]) -> None:
    if not flags.FLAGS["verbosity"].present:
        # seqio and Orbax log every step of their set-up at INFO; keep the console for the run.
        logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}; flags take the form --name=value.")
    try:
        distributed.initialize()  # first: jax.distributed must start before any backend does
        runner.check_names(flags.FLAGS.fdl_config, flags.FLAGS.fiddler, experiments)
        cfg = fdl_flags.create_buildable_from_flags(experiments, allow_imports=True)
        name = runner.experiment_name(flags.FLAGS.fdl_config, flags.FLAGS.fdl_config_file)
        workdir = pathlib.Path(_WORKDIR.value or f"runs/{name}")
        runner.run(cfg, workdir, _run_options(), start_elsewhere=_START_ELSEWHERE.value)
    except (
        ValueError,
        TypeError,
        FileNotFoundError,
        runner.RunError,
        loop.NonFiniteLoss,
        ckpt.CheckpointWriteError,
    ) as e:
        if _TRACEBACK.value:
            raise
        print(f"error: {runner.one_line(e)} (--traceback shows where)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main, flags_parser=fdl_flags.flags_parser)
