"""Write a run's checkpoint as an HF model: `llama-fdl export --workdir=RUN --out=DIR`.

DIR then loads with `transformers.LlamaForCausalLM.from_pretrained(DIR)` (or
`AutoModelForCausalLM`; a model with q/k/v-only biases exports as Qwen2) and gives the run's
logits; --step picks a checkpoint other than the latest. See `llama_fdl.export.export_run`.
Needs torch and transformers (`pip install -e ".[hf]"`). `python launch/export.py` runs this
command from a checkout.
"""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Sequence

from absl import app, flags

from llama_fdl import commands, runner
from llama_fdl.cli import flags as fdl_flags  # --workdir and --traceback

_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to export; default: the latest.")
_OUT = flags.DEFINE_string("out", None, "New directory for the HF model.")


def parse_flags(argv: list[str]) -> list[str]:
    return fdl_flags.parse(argv)


def main(argv: list[str], typed: Sequence[str]) -> None:
    del typed  # no overrides to label
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}; flags take the form --name=value.")
    if fdl_flags.WORKDIR.value is None or _OUT.value is None:
        sys.exit("error: export needs --workdir=RUN (a trained run) and --out=DIR (a new directory).")
    commands.quiet_logs()
    from llama_fdl.export import export_run

    workdir, out = fdl_flags.WORKDIR.value, pathlib.Path(_OUT.value)
    try:
        step = export_run(workdir, out, _STEP.value)
    except (ValueError, FileNotFoundError, OSError) as e:
        if fdl_flags.TRACEBACK.value:
            raise
        print(f"error: {runner.one_line(e)} (--traceback shows where)", file=sys.stderr)
        sys.exit(1)
    print(f"Wrote step {step} of {workdir} to {out}; LlamaForCausalLM.from_pretrained loads it.")
