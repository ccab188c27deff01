"""scripts/gpu_check.sh --dry-run: the GPU check's command lines, steps and summaries, run on
the CPU (its GPU tests and benchmarks skip without CUDA; the Scorer and training steps run tiny)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _gpu_check_module():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_dry_run_writes_both_summaries(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    r = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry-run"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=900)  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads((tmp_path / "gpu_check.json").read_text())
    t = res["tests"]
    assert t["tests"] > 0 and t["failures"] == 0 and t["errors"] == 0  # the GPU selection was collected
    steps = {s["step"]: s for s in res["steps"]}
    assert set(steps) == {"scoring", "train"} and all(s["tiny"] and s["device"] == "cpu" for s in steps.values())
    assert "fp32" in steps["scoring"]["results"] and {"global fp32", "local fp32"} <= set(steps["train"]["results"])
    assert all(v["images_per_s"] > 0 for s in steps.values() for v in s["results"].values())
    md = (tmp_path / "gpu_check.md").read_text()
    assert md.startswith("# GPU check") and "| fp32 |" in md and "| global fp32 |" in md


def test_summary_compares_benchmarks(tmp_path):
    # a benchmark file as pytest-benchmark writes it on a GPU: ours against a peer with a target
    bench = {"benchmarks": [
        {"name": "ours", "group": "ms_ssim fwd", "stats": {"median": 0.002}, "extra_info": {"role": "ours"}},
        {"name": "pytorch_msssim", "group": "ms_ssim fwd", "stats": {"median": 0.04},
         "extra_info": {"role": "peer", "target": 15}}]}  # fmt: skip
    (tmp_path / "bench_gpu.json").write_text(json.dumps(bench))
    res = _gpu_check_module().summary(tmp_path)
    (row,) = res["benchmarks"]["bench_gpu"]["comparisons"]
    assert row["ratio"] == 20.0 and row["met"] is True and res["tests"] is None
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| ms_ssim fwd | ours | 2.00 ms | pytorch_msssim | 40.00 ms | 20.00x | >= 15x (met) |" in md
