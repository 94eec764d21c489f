"""Continue prompts with a trained run: `llama-fdl sample --workdir=RUN --prompt=TEXT`.

Loads RUN/config.json and the parameters of the latest checkpoint (or --step), tokenizes each
prompt with the run's own vocabulary, and prints --num_samples continuations of each:

    llama-fdl sample --workdir=runs/small --prompt='def fibonacci(n):' --num_samples=3

Sampling: --temperature (0 is greedy), --top_k, --top_p, --seed; each continuation stops at the
vocabulary's end-of-sequence token (unless --nostop_at_eos) or after --max_new_tokens (default:
what the model's context leaves after the longest prompt). `python launch/sample.py` runs this
command from a checkout.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from absl import app, flags

from llama_fdl import commands, runner
from llama_fdl.cli import flags as fdl_flags  # --workdir and --traceback

_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to load; default: the latest.")
_PROMPT = flags.DEFINE_multi_string("prompt", None, "Text to continue; repeat the flag for several.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1, "Continuations per prompt.", lower_bound=1)
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", None, "Tokens per continuation; default: fill the context.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.8, "Sampling temperature; 0 is greedy.")
_TOP_K = flags.DEFINE_integer("top_k", None, "Sample among the k most likely tokens only.")
_TOP_P = flags.DEFINE_float(
    "top_p", None, "Sample among the most likely tokens holding this much probability."
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the sampling rng.")
_STOP_AT_EOS = flags.DEFINE_bool("stop_at_eos", True, "End a continuation at the end-of-sequence token.")


def parse_flags(argv: list[str]) -> list[str]:
    return fdl_flags.parse(argv)


def main(argv: list[str], typed: Sequence[str]) -> None:
    del typed  # no overrides to label
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}; flags take the form --name=value.")
    if fdl_flags.WORKDIR.value is None or not _PROMPT.value:
        sys.exit("error: sample needs --workdir=RUN (a trained run) and at least one --prompt=TEXT.")
    commands.quiet_logs()  # Orbax logs its restore at INFO
    from llama_fdl import saved_run

    workdir = fdl_flags.WORKDIR.value
    try:
        model = saved_run.load_run(workdir, _STEP.value)
        prompts = [p for p in _PROMPT.value for _ in range(_NUM_SAMPLES.value)]
        continuations = model.complete(
            prompts,
            max_new_tokens=_MAX_NEW.value,
            temperature=_TEMPERATURE.value,
            top_k=_TOP_K.value,
            top_p=_TOP_P.value,
            seed=_SEED.value,
            stop_at_eos=_STOP_AT_EOS.value,
        )
    except (ValueError, FileNotFoundError) as e:
        if fdl_flags.TRACEBACK.value:
            raise
        print(f"error: {runner.one_line(e)} (--traceback shows where)", file=sys.stderr)
        sys.exit(1)
    for i, (prompt, continuation) in enumerate(zip(prompts, continuations, strict=True)):
        which = f"prompt {i // _NUM_SAMPLES.value + 1}, sample {i % _NUM_SAMPLES.value + 1}"
        print(f"=== {which} (step {model.step} of {workdir}) ===")
        print(prompt + continuation, flush=True)
