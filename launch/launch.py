"""Launch an experiment from a checkout: `python launch/launch.py --fdl_config=experiments.small`.

The same as `llama-fdl train ...` once the package is installed; the command itself lives in
llama_fdl/commands/train.py (its docstring lists the flags and the order overrides apply in).
This wrapper is for checkouts that are not installed (Bazel targets, cluster scripts).
"""

import pathlib
import sys

_REPO = pathlib.Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from llama_fdl import commands  # noqa: E402

if __name__ == "__main__":
    commands.run("train", sys.argv[1:], prog=sys.argv[0])
