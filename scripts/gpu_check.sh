#!/usr/bin/env bash
# The whole GPU check in one command, for the rare short GPU slot (device tool, README
# "GPU check"). Builds the CUDA kernels with the machine's own PyTorch, runs the CUDA and
# Triton tests against the reference, times the MS-SSIM kernels (global / local, fp32 and
# bf16) and a short training run of the --preset cpu recipe on the GPU. Everything it measures
# lands in $OUT (the device tool's folder) or ./gpu_check_out. Budget: ~6 minutes on an H100.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(pwd)/gpu_check_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 IGD_FAST_CUDA=1
step() { echo "== $1 ($(date +%T))" | tee -a "$OUT/summary.txt"; }

step "machine"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
} 2>&1 | tee -a "$OUT/summary.txt"

step "build (the extension with its CUDA kernels, in place)"
$PY setup.py build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
$PY -c "import igd_fast; print(igd_fast.backends())" 2>&1 | tee -a "$OUT/summary.txt"

step "CUDA and Triton kernels against the reference"
timeout 240 $PY -m pytest -q -p no:cacheprovider -x tests/test_ssim_cuda.py tests/test_patches_cuda.py \
  tests/test_ssim_triton.py 2>&1 | tee "$OUT/tests.log" | tail -3 | tee -a "$OUT/summary.txt"

step "MS-SSIM kernel timings (median of 20)"
for cfg in global local; do
  for dt in float32 bfloat16; do
    timeout 60 $PY -m igd_fast bench --config "$cfg" --device cuda --dtype "$dt" --repeats 20 \
      --json "$OUT/bench_${cfg}_${dt}.json" 2>&1 | tail -8 | tee -a "$OUT/summary.txt"
  done
done

step "training on the GPU: --preset cpu recipe on generated data (200 defect steps)"
data=$(mktemp -d)
$PY -c "from igd_fast.data import make_synthetic_mvtec; make_synthetic_mvtec('$data', 'synth', n_train=40, size=256)"
start=$(date +%s)
timeout 180 $PY -m igd_fast train --data "$data" --category synth --out "$data/model" --preset cpu --epochs 5 \
  --defect-steps 200 --device cuda --no-progress 2>&1 | tail -3 | tee -a "$OUT/summary.txt"
echo "train seconds: $(( $(date +%s) - start ))" | tee -a "$OUT/summary.txt"
timeout 120 $PY -m igd_fast eval --model "$data/model" --data "$data" --category synth --device cuda --no-progress \
  --out "$OUT/eval" 2>&1 | tail -12 | tee -a "$OUT/summary.txt"
step "done"
