#!/usr/bin/env bash
# Proves the CUDA sources compile (no GPU needed): a separate venv with the CUDA build
# of torch, nvcc from CUDA_HOME, Hopper target; the result goes to a scratch folder and
# is imported on the CPU. Never touches the CPU build in igd_fast/.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${IGD_FAST_CUDA_VENV:-/tmp/igd_fast_cuda_venv}
OUT=${IGD_FAST_CUDA_OUT:-/tmp/igd_fast_cuda_build}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
if [ ! -x "$CUDA_HOME/bin/nvcc" ]; then
  echo "check_cuda_build: no nvcc under $CUDA_HOME" >&2
  exit 1
fi
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "${IGD_FAST_CUDA_TORCH:-torch==2.14.1}" numpy setuptools wheel ninja
rm -rf "$OUT" && mkdir -p "$OUT"
IGD_FAST_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=2 \
  "$VENV/bin/python" setup.py -q build_ext --build-lib "$OUT/lib" --build-temp "$OUT/tmp"
cp -r igd_fast "$OUT/pkg_igd_fast" && cp "$OUT"/lib/igd_fast/_C*.so "$OUT/pkg_igd_fast/"
cp -r kernels "$OUT/pkg_igd_fast/kernels"  # installed as igd_fast.kernels (setup.py package-dir)
mv "$OUT/pkg_igd_fast" "$OUT/igd_fast"
(cd "$OUT" && "$VENV/bin/python" -c "
import torch, igd_fast._C as C
assert C.has_cuda(), 'extension built without CUDA'
ops = ['ssim_scale', 'ssim_scale_backward', 'combine_maps', 'fold_patch_maps', 'anomaly_map']
for op in ops:
    for key in ('CPU', 'CUDA'):
        assert torch._C._dispatch_has_kernel_for_dispatch_key('igd_fast_C::' + op, key), (op, key)
print('CUDA build OK: CPU and CUDA kernels registered for', ops)
")
