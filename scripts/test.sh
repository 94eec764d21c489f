#!/usr/bin/env bash
# Sets up .venv with the test extra, lints, and runs the whole test suite. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash scripts/setup.sh test
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# pytest exits 5 when it collected no tests; set -e turns that into a failure too.
# Two workers (pytest-xdist), one test file at a time each, so a file's module fixtures run once:
# most tests wait on one core (imports, compiles, launcher subprocesses), so two keep a 2-core
# machine busy. PYTEST_WORKERS=0 runs everything in this one process.
.venv/bin/python -m pytest -q -n "${PYTEST_WORKERS:-2}" --dist loadfile "$@"
echo "scripts/test.sh took $(( $(date +%s) - start )) s"
