"""Write a run's checkpoint as an HF model: `python launch/export.py --workdir=RUN --out=DIR`.

DIR then loads with `transformers.LlamaForCausalLM.from_pretrained(DIR)` (or
`AutoModelForCausalLM`; a model with q/k/v-only biases exports as Qwen2) and gives the run's
logits; --step picks a checkpoint other than the latest. See `llama_fdl.export.export_run`.
Needs torch and transformers (`pip install -e ".[hf]"`).
"""

from __future__ import annotations

import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_REPO = pathlib.Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from absl import app, flags, logging  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "The run directory to export.", required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to export; default: the latest.")
_OUT = flags.DEFINE_string("out", None, "New directory for the HF model.", required=True)
_TRACEBACK = flags.DEFINE_bool("traceback", False, "Show the full traceback of an error.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}; flags take the form --name=value.")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    from llama_fdl.export import export_run

    out = pathlib.Path(_OUT.value)
    try:
        step = export_run(_WORKDIR.value, out, _STEP.value)
    except (ValueError, FileNotFoundError, OSError) as e:
        if _TRACEBACK.value:
            raise
        print(f"error: {str(e).strip().splitlines()[0]} (--traceback shows where)", file=sys.stderr)
        sys.exit(1)
    print(f"Wrote step {step} of {_WORKDIR.value} to {out}; LlamaForCausalLM.from_pretrained loads it.")


if __name__ == "__main__":
    app.run(main)
