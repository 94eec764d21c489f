"""`python launch/sample.py --workdir=RUN ...` from a checkout: the same as `llama-fdl sample ...`.

The command lives in llama_fdl/commands/sample.py (its docstring lists the flags). This wrapper is
for checkouts that are not installed (Bazel targets, cluster scripts).
"""

import pathlib
import sys

_REPO = pathlib.Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from llama_fdl import commands  # noqa: E402

if __name__ == "__main__":
    commands.run("sample", sys.argv[1:], prog=sys.argv[0])
