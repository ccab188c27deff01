"""Local-model patch pipeline (SPEC section 3): 16 images 3×256×256, 225 patches of 32²
(stride 16) each, LOCAL MS-SSIM config.

    pytest benchmarks/test_bench_patches.py --benchmark-only --benchmark-group-by=group -s

Pipeline timed on both sides: extract the patches of the images, score every patch
against its reconstruction (per-patch value + per-pixel map), fold the maps back
(mean of overlaps) and max-pool the patch scores into the pixel map / image score.
The reconstructions stand for the local model's output and are made once, untimed.

* peer: the pytorch-style reference (``igd_fast.reference.patches``): ``F.unfold``,
  MS-SSIM value and MS-SSIM map as two separate passes of plain PyTorch, ``F.fold``
  divided by the fold of ones, scatter-max;
* ours: ``extract_patches`` (one copy of the patches), ``patch_scores`` (one pass of
  the fused SSIM kernels gives values and maps), ``fold_patch_maps``, ``anomaly_map``.

Each group holds the peer and ours (``extra_info["side"]``); the module teardown prints
peer/ours median ratios (target >= 30× for the pipeline on CPU). GPU variants (64
images, ``cuda`` and ``triton`` backends) are skipped without a GPU.
"""

from __future__ import annotations

import os

import pytest
import torch

import igd_fast
from igd_fast import LOCAL
from igd_fast.reference import patches as ref

torch.set_num_threads(int(os.environ.get("IGD_BENCH_THREADS", "2")))

SIZE, PATCH, STRIDE = 256, 32, 16
BATCH = {"cpu": 16, "cuda": 64}
MEDIANS: dict[tuple[str, str], float] = {}  # (group, side) -> median seconds


def _gpu_backends():
    if not torch.cuda.is_available():
        return []
    return [b for b in ("cuda", "triton") if igd_fast.backends()[b]]


def _data(device):
    g = torch.Generator().manual_seed(0)
    n = BATCH["cuda" if device == "cuda" else "cpu"]
    images = torch.rand((n, 3, SIZE, SIZE), generator=g) * 4.7579 - 2.1179
    patches = ref.extract_patches(images, PATCH, STRIDE)
    recon = patches + 0.2 * torch.randn(patches.shape, generator=g)
    return images.to(device), recon.to(device)


@pytest.fixture(scope="module")
def cpu_data():
    return _data("cpu")


@pytest.fixture(scope="module")
def gpu_data():
    return _data("cuda")


@pytest.fixture(scope="module", autouse=True)
def _print_ratios():
    yield
    groups = sorted({g for g, _ in MEDIANS})
    for group in groups:
        peer = MEDIANS.get((group, "peer"))
        for (g, side), t in sorted(MEDIANS.items()):
            if g == group and side != "peer" and peer:
                print(f"\n{group}: peer {peer * 1e3:.1f} ms, {side} {t * 1e3:.2f} ms -> {peer / t:.1f}x")


def _bench(benchmark, group, side, fn, rounds, sync=False):
    def step():
        out = fn()
        if sync:
            torch.cuda.synchronize()
        return out

    step()  # warm-up: allocator, Triton compilation
    benchmark.group = group
    benchmark.extra_info["side"] = side
    benchmark.extra_info["role"] = "peer" if side == "peer" else "ours"
    benchmark.extra_info["entry"] = "unfold/fold reference" if side == "peer" else f"igd_fast ({side})"
    if side == "peer" and group.startswith("patches_pipeline"):
        benchmark.extra_info["target"] = 30.0
    benchmark.extra_info["images"] = BATCH["cuda" if sync else "cpu"]
    benchmark.pedantic(step, rounds=rounds, iterations=1)
    MEDIANS[(group, side)] = benchmark.stats.stats.median


def peer_pipeline(images, recon):
    patches = ref.extract_patches(images, PATCH, STRIDE)
    scores, maps = ref.patch_scores(patches, recon, LOCAL)
    pixel = ref.fold_patch_maps(maps, SIZE, SIZE, PATCH, STRIDE, "mean")
    worst = ref.anomaly_map(scores.view(images.shape[0], -1), SIZE, SIZE, PATCH, STRIDE)
    return pixel, worst


def our_pipeline(images, recon, backend):
    patches, grid = igd_fast.extract_patches(images, PATCH, STRIDE)
    scores, maps = igd_fast.patch_scores(patches, recon, LOCAL, backend=backend)
    pixel = igd_fast.fold_patch_maps(maps, grid, "mean", backend=backend)
    return pixel, igd_fast.anomaly_map(scores, grid, backend=backend)


def _check_agree(images, recon, backend):
    """Both pipelines give the same maps and scores (2 images) before either is timed."""
    with torch.no_grad():
        pixel_p, (map_p, score_p, _) = peer_pipeline(images[:2], recon[: 2 * 225])
        pixel_o, res = our_pipeline(images[:2], recon[: 2 * 225], backend)
    torch.testing.assert_close(pixel_o, pixel_p, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(res.pixel_map, map_p, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(res.image_score, score_p, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- CPU


@torch.no_grad()
def test_pipeline_cpu_peer(benchmark, cpu_data):
    _bench(benchmark, "patches_pipeline_cpu", "peer", lambda: peer_pipeline(*cpu_data), rounds=3)


@torch.no_grad()
def test_pipeline_cpu_ours(benchmark, cpu_data):
    _check_agree(*cpu_data, "cpu")
    _bench(benchmark, "patches_pipeline_cpu", "cpu", lambda: our_pipeline(*cpu_data, "cpu"), rounds=15)


@torch.no_grad()
def test_fold_maxpool_cpu_peer(benchmark, cpu_data):
    maps = torch.rand(cpu_data[1].shape[0], 1, PATCH, PATCH)
    scores = torch.rand(BATCH["cpu"], 225)

    def run():
        ref.fold_patch_maps(maps, SIZE, SIZE, PATCH, STRIDE, "mean")
        ref.anomaly_map(scores, SIZE, SIZE, PATCH, STRIDE)

    _bench(benchmark, "patches_fold_maxpool_cpu", "peer", run, rounds=10)


@torch.no_grad()
def test_fold_maxpool_cpu_ours(benchmark, cpu_data):
    maps = torch.rand(cpu_data[1].shape[0], 1, PATCH, PATCH)
    scores = torch.rand(BATCH["cpu"] * 225)
    grid = igd_fast.PatchGrid(SIZE, SIZE, PATCH, STRIDE)

    def run():
        igd_fast.fold_patch_maps(maps, grid, "mean", backend="cpu")
        igd_fast.anomaly_map(scores, grid, backend="cpu")

    _bench(benchmark, "patches_fold_maxpool_cpu", "cpu", run, rounds=50)


# ---------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@torch.no_grad()
def test_pipeline_gpu_peer(benchmark, gpu_data):
    _bench(benchmark, "patches_pipeline_gpu", "peer", lambda: peer_pipeline(*gpu_data), rounds=10, sync=True)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", _gpu_backends())
@torch.no_grad()
def test_pipeline_gpu_ours(benchmark, gpu_data, backend):
    _check_agree(*gpu_data, backend)
    _bench(benchmark, "patches_pipeline_gpu", backend, lambda: our_pipeline(*gpu_data, backend), rounds=30, sync=True)
