#!/usr/bin/env bash
# Proves the package layout installs: the top-level kernels/ folder (the Triton sources)
# must import as igd_fast.kernels after both an editable and a plain install.
#   editable: the repository's .venv (scripts/install.sh installs it with -e), imported
#             from outside the repository, must resolve igd_fast.kernels to ./kernels;
#   plain:    `pip install --no-build-isolation .` of a clean copy of the tracked and
#             untracked-but-not-ignored files (no stale build/) into a scratch target,
#             without the compiled extension (IGD_FAST_EXT=0: seconds, not minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${IGD_FAST_PYTHON:-$ROOT/.venv/bin/python}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

check() {  # $1: what, $2: the folder igd_fast.kernels must come from; PYTHONPATH set by the caller
  (cd "$TMP" && "$PY" - "$1" "$2" <<'PY'
import os, sys
import igd_fast, igd_fast.kernels
what, want = sys.argv[1], os.path.realpath(sys.argv[2])
got = os.path.dirname(os.path.realpath(igd_fast.kernels.__file__))
assert got == want, f"{what}: igd_fast.kernels from {got}, expected {want}"
for name in ("ssim.py", "patches.py"):
    assert os.path.isfile(os.path.join(got, name)), f"{what}: {name} missing from {got}"
print(f"{what}: import igd_fast.kernels OK ({got})")
PY
  )
}

echo "== editable install ($PY)"
check editable "$ROOT/kernels"

echo "== plain install"
mkdir -p "$TMP/src" "$TMP/target"
git ls-files -z --cached --others --exclude-standard | xargs -0 tar -c | tar -x -C "$TMP/src"
IGD_FAST_EXT=0 "$PY" -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps \
  --target "$TMP/target" "$TMP/src"
PYTHONPATH="$TMP/target" check plain "$TMP/target/igd_fast/kernels"
