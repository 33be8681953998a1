#!/usr/bin/env bash
# The GPU benchmark in one command on the H200 machine (bench/README.md): installs the carried wheels
# (bench/gpu_wheels.sh made them here) into a folder on PYTHONPATH, offline, without touching the image's
# packages, then runs bench/gpu_benchmark.py with the image's python3 (torch, jax, flax). The JSON and a log
# go to $OUT (what the device tool brings back) or bench/results. Arguments pass through (--quick, --rows, …).
#
#     bash bench/gpu_bench.sh             # ≈ 5–6 min on an H200
set -euo pipefail
cd "$(dirname "$0")/.."
shopt -s nullglob
wheels=(bench/wheels/*.whl)
if [ ${#wheels[@]} -eq 0 ]; then
    echo "bench/wheels/ has no wheels: run 'bash bench/gpu_wheels.sh' where PyPI is reachable, and carry bench/wheels" >&2
    exit 2
fi
site=${GPU_BENCH_SITE:-/tmp/mvd_bench_site}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "${wheels[@]}"
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
out=${OUT:-bench/results}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
set -o pipefail
python3 bench/gpu_benchmark.py --out "$out/gpu_benchmark_h200.json" "$@" 2>&1 | tee "$out/gpu_benchmark_h200.log"
