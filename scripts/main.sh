#!/usr/bin/env bash
# The main job: sets up .venv/ (core dependencies only) and prints the efficiency table of the paper configs.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="" . scripts/venv.sh
exec python -m mvd_jax.tables "$@"
