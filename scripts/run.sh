#!/usr/bin/env bash
# Sets up .venv and trains experiments.small on the stdlib corpus into runs/small.
# Extra arguments go to the launcher, e.g. scripts/run.sh --fdl.trainer.num_train_steps=500
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python launch/launch.py --fdl_config=experiments.small "$@"
