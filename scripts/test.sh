#!/usr/bin/env bash
# The test suite: sets up .venv/ with the test and export extras (CPU torch, diffusers, transformers;
# TensorFlow, LiteRT, qai-hub for tests/test_export.py) and runs pytest,
# two files at a time (pytest-xdist, one worker per core of the 2-core CI machine; XLA's compiler is
# mostly single-threaded, so two workers nearly halve the wall time; three were slower, measured on a fresh
# clone on 2026-12-05: pytest 30 min 22 s against 28 min 23 s with two; --dist loadfile keeps each file's
# module fixtures in one worker). --no-loadscope-reorder keeps the collection order of tests/conftest.py
# (the longest files first); xdist's default sends the files with the most tests first, which left
# the one-test 8-minute multi-device file to start last. PYTEST_WORKERS=0 runs serially.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="test,export" . scripts/venv.sh
exec python -m pytest -q -n "${PYTEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder --durations=30 tests "$@"
