# Creates or reuses .venv/ at the repository root and installs mvd_jax with the given extras.
# Usage (sourced): EXTRAS=test . scripts/venv.sh
# Re-installs only when setup.py or the extras changed (a stamp file records what was installed).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
want="$(sha256sum "$ROOT/setup.py" | cut -c1-16)-${EXTRAS:-}"
stamp="$VENV/.mvd_jax_installed"
if [ ! -f "$stamp" ] || ! grep -qx -- "$want" "$stamp"; then
  spec="$ROOT"
  [ -n "${EXTRAS:-}" ] && spec="$ROOT[${EXTRAS}]"
  # torch is pinned to the CPU wheel in setup.py's test extra; nothing here may pull a CUDA build.
  # --no-compile: no .pyc for all of TensorFlow, torch and JAX up front (94 → 71 s on a fresh clone); Python
  # writes them for the modules actually imported, once, on first import.
  # pip's stderr without one notice, dropped by its exact text: a pip.conf whose extra-index-url names local
  # file:// indexes (this project's CI machines) makes pip warn "Location 'file://…' is ignored" once per
  # package that such an index does not hold — over a hundred lines about the machine's configuration, none
  # a problem. Every other line, and pip's exit status, passes through.
  { "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-compile -e "$spec" 2>&1 1>&3 |
    { grep -vxE "WARNING: Location 'file://[^']*' is ignored: it is neither a file nor a directory\." || true; } >&2
  } 3>&1
  echo "$want" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
