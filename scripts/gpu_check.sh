#!/usr/bin/env bash
# The whole GPU check in one command, for the rare short GPU slot (device tool, README
# "GPU check"); everything lands in $OUT (the device tool's folder; default ./gpu_check_out):
#   1. the machine (GPU, driver, torch, triton)                          machine.txt
#   2. the extension built against this machine's torch, CUDA kernels in  build.log
#   3. every GPU test: CUDA and Triton kernels against the reference      tests.log, tests.xml
#   4. GPU benchmarks (pytest-benchmark JSON, peers side by side):
#      MS-SSIM 64x3x256² forward and forward+backward against pytorch_msssim for each
#      backend, the fused scale-0 forward and the whole forward against the time to read
#      both inputs once (bandwidth in the same run); the patch pipeline
#      against unfold/fold; a training step per model with bf16 AMP
#      against pytorch_msssim's loss                                      bench_gpu.json
#   5. Scorer images/s at width 64, fp32 and bf16                        step_scoring.json
#      one M-step per model at width 64, fp32 and bf16 AMP               step_train.json
#   6. the --preset cpu recipe trained briefly on generated data, then eval   preset_*.log, eval/
#   7. one JSON and one Markdown summary                                 gpu_check.json, gpu_check.md
# Each step has its own timeout (tests 240 s, benchmarks 300 s, steps 150 s, preset 160 s: the
# ceilings; the build is not bounded). Never run on a GPU yet: whether the whole fits the
# 10 minutes is known after its first run (each step's log has its time).
#
#   bash scripts/gpu_check.sh             # on a GPU machine
#   bash scripts/gpu_check.sh --dry-run   # here, on the CPU (CI): no build (the built extension is
#                                         # checked), the GPU tests and benchmarks run and skip without
#                                         # CUDA, steps 5 run tiny on the CPU; the same summaries
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
for a in "$@"; do
  case "$a" in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $a (only --dry-run)" >&2; exit 2 ;;
  esac
done
if [ "$DRY" = 1 ]; then
  OUT=${OUT:-$(mktemp -d -t gpu_check_dry.XXXXXX)}
  DEV=cpu; TINY=--tiny
  unset TRITON_INTERPRET  # Triton's tests need a GPU here too: they skip, as every GPU test does
else
  OUT=${OUT:-$(pwd)/gpu_check_out}
  DEV=cuda; TINY=
  export IGD_FAST_CUDA=1
fi
mkdir -p "$OUT"
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONUNBUFFERED=1 PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
FAILED=0
step() { echo "== $1 ($(date +%T))"; }
# run a step under a time limit; a failure is recorded and the check goes on
run() { local limit=$1; shift; timeout "$limit" "$@" || { echo "step failed ($?): $*"; FAILED=1; }; }

step "machine"
{ [ "$DRY" = 1 ] && echo "dry run on the CPU: $(lscpu | sed -n 's/^Model name: *//p')" \
    || nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import importlib.util as u, torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton',
  __import__('triton').__version__ if u.find_spec('triton') else 'not installed')"
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

if [ "$DRY" = 1 ]; then
  step "build: not in a dry run; the built extension must import"
  $PY -c "import igd_fast; print(igd_fast.backends())" > "$OUT/build.log" 2>&1 || { cat "$OUT/build.log"; exit 1; }
else
  step "build (the extension with its CUDA kernels, in place)"
  $PY setup.py build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
  $PY -c "import igd_fast; print(igd_fast.backends())" >> "$OUT/build.log" 2>&1
fi
tail -1 "$OUT/build.log"

step "GPU tests: CUDA and Triton kernels against the reference"
# a dry run selects what needs a GPU (-m gpu): those files' CPU-side checks run in the suite anyway
sel=(); [ "$DRY" = 1 ] && sel=(-m gpu)
run 240 $PY -m pytest -q -p no:cacheprovider "${sel[@]}" --junitxml="$OUT/tests.xml" tests/test_ssim_cuda.py \
  tests/test_patches_cuda.py tests/test_ssim_triton.py > "$OUT/tests.log" 2>&1
tail -1 "$OUT/tests.log"

step "GPU benchmarks"
# -k gpu: all of test_bench_ms_ssim_gpu.py, and the *gpu* tests of the two files that hold CPU ones too
run 300 $PY -m pytest -q -p no:cacheprovider -k gpu benchmarks/test_bench_ms_ssim_gpu.py \
  benchmarks/test_bench_patches.py benchmarks/test_bench_train.py --benchmark-json="$OUT/bench_gpu.json" \
  > "$OUT/bench_gpu.log" 2>&1
tail -1 "$OUT/bench_gpu.log"

step "Scorer images/s and training steps, fp32 and bf16 ($DEV${TINY:+, tiny})"
run 150 $PY benchmarks/gpu_check.py steps --device "$DEV" --out "$OUT" $TINY > "$OUT/steps.log" 2>&1

if [ "$DRY" = 1 ]; then
  step "the --preset cpu recipe trained and evaluated on the GPU: not in a dry run (minutes on a CPU)"
else
  step "the --preset cpu recipe on generated data on the GPU (5 epochs, 200 defect steps), then eval"
  data=$(mktemp -d)
  $PY -c "from igd_fast.data import make_synthetic_mvtec; make_synthetic_mvtec('$data', 'synth', n_train=40, size=256)"
  start=$(date +%s)
  run 100 $PY -m igd_fast train --data "$data" --category synth --out "$data/model" --preset cpu --epochs 5 \
    --defect-steps 200 --device cuda --no-progress > "$OUT/preset_train.log" 2>&1
  echo "train seconds: $(( $(date +%s) - start ))" | tee -a "$OUT/preset_train.log"
  run 60 $PY -m igd_fast eval --model "$data/model" --data "$data" --category synth --device cuda --no-progress \
    --out "$OUT/eval" > "$OUT/preset_eval.log" 2>&1
  tail -3 "$OUT/preset_eval.log"
fi

step "summary"
$PY benchmarks/gpu_check.py summary --out "$OUT" || FAILED=1
echo "gpu_check: results in $OUT (gpu_check.json, gpu_check.md)"
exit $FAILED
