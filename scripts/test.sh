#!/usr/bin/env bash
# The test suite: sets up .venv/ with the test and export extras (CPU torch, diffusers, transformers;
# TensorFlow, LiteRT, qai-hub for tests/test_export.py) and runs pytest,
# two files at a time (pytest-xdist, one worker per core of the 2-core CI machine; XLA's compiler is
# mostly single-threaded, so two workers nearly halve the wall time; --dist loadfile keeps each file's
# module fixtures in one worker). PYTEST_WORKERS=0 runs serially.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="test,export" . scripts/venv.sh
exec python -m pytest -q -n "${PYTEST_WORKERS:-2}" --dist loadfile --durations=30 tests "$@"
