#!/usr/bin/env bash
# Downloads, HERE (where PyPI is reachable), the pure-Python wheels that bench/gpu_bench.sh installs on the GPU
# machine, which has no internet and no diffusers (shared/spec/accelerators.md): into bench/wheels/ (git-ignored;
# named in the device call's carry list). That machine's Python 3.12 image already has torch, jax, flax, numpy,
# huggingface-hub (1.33, diffusers wants >= 1.32), safetensors 0.8, regex, requests, filelock, Pillow, zipp,
# absl-py and PyYAML; what it lacks for this benchmark:
#   diffusers          the PyTorch side (pure Python)
#   importlib_metadata diffusers' declared dependency (8.7.0: needs only zipp; 10.x would add lazy-importer)
#   ml-collections     this repo's configs (mvd_jax.config, configs/paper/*.py)
#
#     bash bench/gpu_wheels.sh            # ≈ 6.4 MB
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-../.venv/bin/python}
[ -x "$PY" ] || PY=python3
rm -rf wheels && mkdir -p wheels
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation py --platform any \
    -d wheels diffusers==0.42.1 importlib_metadata==8.7.0 ml-collections==1.1.0
ls -l wheels
