#!/usr/bin/env bash
# The test suite: sets up .venv/ with the test extra (CPU torch, diffusers, transformers) and runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="test" . scripts/venv.sh
exec python -m pytest -q tests "$@"
