#!/usr/bin/env bash
# Creates .venv and installs igd_fast into it (compiling the C++ extension).
#   bash scripts/install.sh          # runtime: torch, the package, its CLI
#   bash scripts/install.sh --test   # plus test, benchmark and peer libraries
# torch goes in first and the package builds with --no-build-isolation, so pip never
# fetches a second, multi-GB torch into an isolated build environment.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${IGD_FAST_TORCH:-torch==2.13.0}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)
"${PIP[@]}" "$TORCH_SPEC" numpy setuptools wheel ninja
extras=""
[ "${1:-}" = "--test" ] && extras="[test]"
"${PIP[@]}" --no-build-isolation -e ".${extras}"
.venv/bin/python -c "import igd_fast; print('igd_fast', igd_fast.__version__, 'backends:', igd_fast.backends())"
