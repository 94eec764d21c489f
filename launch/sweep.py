"""Run a sweep from a checkout: `python launch/sweep.py --fdl_config=experiments.small --sweep=lr_small`.

The same as `llama-fdl sweep ...` once the package is installed; the command lives in
llama_fdl/commands/sweep.py. This wrapper is for checkouts that are not installed.
"""

import pathlib
import sys

_REPO = pathlib.Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from llama_fdl import commands  # noqa: E402

if __name__ == "__main__":
    commands.run("sweep", sys.argv[1:], prog=sys.argv[0])
