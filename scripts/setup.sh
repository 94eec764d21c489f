#!/usr/bin/env bash
# Creates or updates .venv with llama_fdl installed (editable) at the versions of constraints.txt.
# Pass "test" to add the test extra.
# Also installs graphviz's `dot` (it draws each run's config.svg) when it is missing and apt can.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v dot >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing graphviz (dot draws each run's config.svg)"
    # A failed install is a warning, not a stop: training works without the picture.
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz >/dev/null; }; then
      echo "warning: apt-get could not install graphviz; runs will skip config.svg." >&2
    fi
  else
    echo "warning: graphviz's dot is not installed and this script cannot install it (needs root and" \
      "apt-get); runs will skip config.svg and tests that draw it will fail. Install it:" \
      "sudo apt-get install graphviz (Debian/Ubuntu) or brew install graphviz (macOS)." >&2
  fi
fi
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3.12 || command -v python3)}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] not in ((3, 11), (3, 12)))'; then
  echo "error: llama_fdl needs Python 3.11 or 3.12, but $PYTHON is $("$PYTHON" -V 2>&1);" \
    "set PYTHON=/path/to/python3.12 (or python3.11)." >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# constraints.txt pins every package to the known-good set; setup.cfg itself asks only for floors.
if [ "${1:-}" = "test" ]; then
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[test]"
else
  .venv/bin/python -m pip install -q -c constraints.txt -e .
fi
