"""GPU MS-SSIM benchmarks (SPEC section 3): 64×3×256×256 fp32, global config.

    pytest benchmarks/test_bench_ms_ssim_gpu.py --benchmark-only --benchmark-json=bench.json

Side by side in one process: our ``cuda`` and ``triton`` backends against
pytorch_msssim 1.0, forward and forward+backward, and the fused scale-0 forward and the
whole forward against the time to read both inputs once (``torch.dot`` of x and y,
which streams each input exactly once). The last test prints the ratios (and writes
them to ``$IGD_BENCH_SUMMARY`` when set). Targets: fwd+bwd >= 15x pytorch_msssim,
forward within 3x of the read-both-inputs time. Skipped without a GPU.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

import igd_fast
from igd_fast import GLOBAL
from igd_fast.ops.backends import ssim_kernels

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

SHAPE = (64, 3, 256, 256)
RESULTS: dict[str, float] = {}


def _backends():
    """cuda, cuda_async (IGD_FAST_CUDA_ASYNC=1: cp.async double-buffered staging), triton."""
    avail = [b for b in ("cuda", "triton") if torch.cuda.is_available() and igd_fast.backends()[b]]
    return [v for b in avail for v in ((b, "cuda_async") if b == "cuda" else (b,))]


@pytest.fixture
def backend(request, monkeypatch):
    monkeypatch.setenv("IGD_FAST_CUDA_ASYNC", "1" if request.param == "cuda_async" else "0")
    return request.param


def _real(backend: str) -> str:
    return backend.split("_")[0]


@pytest.fixture(scope="module")
def pair():
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.rand(SHAPE, device="cuda", generator=g) * 4.7579 - 2.1179
    y = (x + 0.3 * torch.randn(SHAPE, device="cuda", generator=g)).clamp(-2.1179, 2.64)
    return x, y


def _run(benchmark, name, fn, rounds=20):
    def step():
        fn()
        torch.cuda.synchronize()

    for _ in range(3):  # warm-up: compilation, autotuning, allocator
        step()
    benchmark.pedantic(step, rounds=rounds, iterations=1)
    RESULTS[name] = benchmark.stats.stats.median


def test_read_both_inputs(benchmark, pair):
    x, y = pair
    xf, yf = x.view(-1), y.view(-1)
    _run(benchmark, "read_both", lambda: torch.dot(xf, yf), rounds=50)


@pytest.mark.parametrize("backend", _backends(), indirect=True)
def test_fused_scale0_forward(benchmark, pair, backend):
    x, y = pair
    mod = ssim_kernels(_real(backend))
    args = (GLOBAL.win_size, GLOBAL.sigma, GLOBAL.c1, GLOBAL.c2, False)
    _run(benchmark, f"scale0_fwd_{backend}", lambda: mod.ssim_scale(x, y, *args), rounds=50)


@pytest.mark.parametrize("backend", _backends(), indirect=True)
def test_ms_ssim_forward_ours(benchmark, pair, backend):
    x, y = pair
    with torch.no_grad():
        _run(benchmark, f"fwd_{backend}", lambda: igd_fast.ms_ssim(x, y, backend=_real(backend)))


def test_ms_ssim_forward_pytorch_msssim(benchmark, pair):
    pytorch_msssim = pytest.importorskip("pytorch_msssim")
    x, y = pair
    w = list(GLOBAL.weights)
    with torch.no_grad():
        _run(
            benchmark,
            "fwd_pytorch_msssim",
            lambda: pytorch_msssim.ms_ssim(x, y, data_range=GLOBAL.data_range, weights=w),
        )


@pytest.mark.parametrize("backend", _backends(), indirect=True)
def test_ms_ssim_forward_backward_ours(benchmark, pair, backend):
    x, y0 = pair
    y = y0.clone().requires_grad_(True)

    def step():
        y.grad = None
        (1 - igd_fast.ms_ssim(x, y, backend=_real(backend))).backward()

    _run(benchmark, f"fwd_bwd_{backend}", step)


def test_ms_ssim_forward_backward_pytorch_msssim(benchmark, pair):
    pytorch_msssim = pytest.importorskip("pytorch_msssim")
    x, y0 = pair
    y = y0.clone().requires_grad_(True)
    w = list(GLOBAL.weights)

    def step():
        y.grad = None
        (1 - pytorch_msssim.ms_ssim(x, y, data_range=GLOBAL.data_range, weights=w)).backward()

    _run(benchmark, "fwd_bwd_pytorch_msssim", step)


@pytest.mark.parametrize("backend", _backends(), indirect=True)
def test_ms_ssim_map_ours(benchmark, pair, backend):
    x, y = pair
    with torch.no_grad():
        _run(benchmark, f"map_{backend}", lambda: igd_fast.ms_ssim_map(x, y, backend=_real(backend)))


@pytest.mark.parametrize("backend", _backends(), indirect=True)
def test_profile_breakdown(pair, backend):
    """Where one forward+backward spends its GPU time (printed, and written next to
    ``$IGD_BENCH_SUMMARY`` when set): kernels vs framework glue vs host overhead."""
    from torch.profiler import ProfilerActivity, profile

    x, y0 = pair
    y = y0.clone().requires_grad_(True)

    def step():
        y.grad = None
        (1 - igd_fast.ms_ssim(x, y, backend=_real(backend))).backward()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            step()
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="device_time_total", row_limit=25, max_name_column_width=70)
    print(table)
    path = os.environ.get("IGD_BENCH_SUMMARY")
    if path:
        with open(os.path.splitext(path)[0] + f"_profile_{backend}.txt", "w") as f:
            f.write(table)


def test_summary():
    """Ratios of the medians above (no timed asserts: the numbers are reported)."""
    if "read_both" not in RESULTS:
        pytest.skip("run the whole module to get the summary")
    nbytes = 2 * torch.Size(SHAPE).numel() * 4
    out = {"shape": list(SHAPE), "median_s": dict(RESULTS)}
    out["read_both_GBps"] = nbytes / RESULTS["read_both"] / 1e9
    ratios = {}
    for b in _backends():
        if f"fwd_bwd_{b}" in RESULTS and "fwd_bwd_pytorch_msssim" in RESULTS:
            speedup = RESULTS["fwd_bwd_pytorch_msssim"] / RESULTS[f"fwd_bwd_{b}"]
            ratios[f"fwd_bwd_speedup_vs_pytorch_msssim_{b}"] = speedup
        if f"fwd_{b}" in RESULTS and "fwd_pytorch_msssim" in RESULTS:
            ratios[f"fwd_speedup_vs_pytorch_msssim_{b}"] = RESULTS["fwd_pytorch_msssim"] / RESULTS[f"fwd_{b}"]
        if f"scale0_fwd_{b}" in RESULTS:
            ratios[f"scale0_fwd_over_read_both_{b}"] = RESULTS[f"scale0_fwd_{b}"] / RESULTS["read_both"]
        if f"fwd_{b}" in RESULTS:
            ratios[f"fwd_over_read_both_{b}"] = RESULTS[f"fwd_{b}"] / RESULTS["read_both"]
    out["ratios"] = ratios
    text = json.dumps(out, indent=2)
    print(text)
    path = os.environ.get("IGD_BENCH_SUMMARY")
    if path:
        with open(path, "w") as f:
            f.write(text)
