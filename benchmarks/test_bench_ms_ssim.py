"""MS-SSIM on the CPU, side by side in one process: our C++ kernels, pytorch_msssim 1.0
and our pure-PyTorch reference (SPEC section 3 targets).

    pytest benchmarks/test_bench_ms_ssim.py --benchmark-json=out.json
    python benchmarks/report.py out.json

Each benchmark group holds one ``ours`` entry and its peers; ``report.py`` turns the
medians into speed-up ratios (median peer / median ours) next to the SPEC targets.
"""

from __future__ import annotations

from functools import cache

import pytest
import torch

import igd_fast
from igd_fast import GLOBAL, LOCAL

pytorch_msssim = pytest.importorskip("pytorch_msssim")

THREADS = 2
# Fast entries get more rounds; the slow peers (seconds per call) get a few.
OURS_ROUNDS, PEER_ROUNDS = 10, 3


@pytest.fixture(autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(old)


@cache
def _pair(n: int, c: int, size: int):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, size, size, generator=g)
    y = x + 0.3 * torch.randn(n, c, size, size, generator=g)
    return x, y


def _pm_ms_ssim(x, y):
    return pytorch_msssim.ms_ssim(
        x, y, data_range=GLOBAL.data_range, size_average=True, win_size=GLOBAL.win_size,
        win_sigma=GLOBAL.sigma, weights=list(GLOBAL.weights), K=(GLOBAL.k1, GLOBAL.k2),
    )


def _fwd(fn):
    def run(x, y):
        with torch.no_grad():
            return fn(x, y)

    return run


def _fwd_bwd(fn):
    """Loss and its gradient with respect to the reconstruction y (the training step)."""

    def run(x, y):
        yr = y.detach().requires_grad_(True)
        fn(x, yr).backward()
        return yr.grad

    return run


def _ms_ssim(backend, cfg=GLOBAL):
    return lambda x, y: igd_fast.ms_ssim(x, y, cfg, backend=backend)


def _ms_ssim_map(backend, cfg=GLOBAL):
    return lambda x, y: igd_fast.ms_ssim_map(x, y, cfg, backend=backend)


GLOBAL_SHAPE = (16, 3, 256)
LOCAL_SHAPE = (3600, 3, 32)  # the 15×15 patches (stride 16) of 16 images of 256²

# group -> (input shape, {entry: (role, callable, target speed-up of ours over it)})
GROUPS = {
    "ms_ssim fwd, global, 16x3x256x256": (GLOBAL_SHAPE, {
        "ours": ("ours", _fwd(_ms_ssim("cpu")), None),
        "pytorch_msssim": ("peer", _fwd(_pm_ms_ssim), 30.0),
        "reference": ("peer", _fwd(_ms_ssim("torch")), None),
    }),
    "ms_ssim fwd+bwd (grad y), global, 16x3x256x256": (GLOBAL_SHAPE, {
        "ours": ("ours", _fwd_bwd(_ms_ssim("cpu")), None),
        "pytorch_msssim": ("peer", _fwd_bwd(_pm_ms_ssim), 15.0),
        "reference": ("peer", _fwd_bwd(_ms_ssim("torch")), None),
    }),
    "ms_ssim_map, global, 16x3x256x256": (GLOBAL_SHAPE, {
        "ours": ("ours", _fwd(_ms_ssim_map("cpu")), None),
        "reference": ("peer", _fwd(_ms_ssim_map("torch")), 20.0),
    }),
    "ms_ssim fwd, local, 3600x3x32x32": (LOCAL_SHAPE, {
        "ours": ("ours", _fwd(_ms_ssim("cpu", LOCAL)), None),
        "reference": ("peer", _fwd(_ms_ssim("torch", LOCAL)), 30.0),
    }),
    "ms_ssim_map, local, 3600x3x32x32": (LOCAL_SHAPE, {
        "ours": ("ours", _fwd(_ms_ssim_map("cpu", LOCAL)), None),
        "reference": ("peer", _fwd(_ms_ssim_map("torch", LOCAL)), 30.0),
    }),
}

CASES = [(group, entry) for group, (_, entries) in GROUPS.items() for entry in entries]


@pytest.mark.skipif(not igd_fast.backends()["cpu"], reason="the C++ extension is not built")
@pytest.mark.parametrize("group,entry", CASES, ids=[f"{g} | {e}" for g, e in CASES])
def test_ms_ssim_cpu(benchmark, group, entry):
    (n, c, size), entries = GROUPS[group]
    role, fn, target = entries[entry]
    x, y = _pair(n, c, size)
    benchmark.group = group
    benchmark.extra_info.update(role=role, entry=entry, threads=THREADS)
    if target is not None:
        benchmark.extra_info["target"] = target
    rounds = OURS_ROUNDS if role == "ours" else PEER_ROUNDS
    warmup = 1 if role == "ours" else 0  # peers are plain PyTorch and take seconds
    out = benchmark.pedantic(fn, args=(x, y), rounds=rounds, warmup_rounds=warmup)
    # Peers compute the same quantity: a benchmark of a wrong answer is worthless.
    if entry != "ours":
        ours = entries["ours"][1](x, y)
        scale = float(ours.abs().max())
        torch.testing.assert_close(out, ours, atol=1e-4 * scale, rtol=1e-3)
