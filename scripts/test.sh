#!/usr/bin/env bash
# Sets up .venv with the test extra, lints, and runs the whole test suite. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash scripts/setup.sh test
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# pytest exits 5 when it collected no tests; set -e turns that into a failure too.
.venv/bin/python -m pytest -q "$@"
echo "scripts/test.sh took $(( $(date +%s) - start )) s"
