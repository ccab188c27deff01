"""The patch ops on CUDA tensors (``cuda`` and ``triton`` backends) against the reference,
at the SPEC geometry (256², 32² patches, stride 16) and on irregular grids, with the
scoring pipeline and its gradient. Skipped on machines without a GPU."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import igd_fast
from igd_fast import LOCAL, PatchGrid
from igd_fast.reference import patches as ref

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

GPU_BACKENDS = [
    pytest.param(
        b,
        marks=pytest.mark.skipif(
            not (torch.cuda.is_available() and igd_fast.backends()[b]), reason=f"{b} backend not available"
        ),
    )
    for b in ("cuda", "triton")
]
TOL = {"atol": 1e-5, "rtol": 1e-5}


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("h,w,size,stride", [(256, 256, 32, 16), (200, 400, 32, 16), (97, 61, 13, 5), (64, 64, 32, 32)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fold_and_anomaly_map(backend, h, w, size, stride, dtype):
    grid = PatchGrid(h, w, size, stride)
    maps = torch.randn(3 * grid.count, 3, size, size, dtype=dtype)
    for mode in ("mean", "sum", "max"):
        ours = igd_fast.fold_patch_maps(maps.cuda(), grid, mode, backend=backend)
        torch.testing.assert_close(ours.cpu(), ref.fold_patch_maps(maps, h, w, size, stride, mode), **TOL)
    scores = torch.randn(3 * grid.count, dtype=dtype)
    scores[grid.count + 7] = scores[grid.count + 3] = scores.max() + 1  # a tie: the first wins
    ours = igd_fast.anomaly_map(scores.cuda(), grid, backend=backend)
    want = igd_fast.anomaly_map(scores, grid, backend="torch")
    torch.testing.assert_close(ours.pixel_map.cpu(), want.pixel_map, **TOL)
    torch.testing.assert_close(ours.image_score.cpu(), want.image_score, **TOL)
    assert torch.equal(ours.worst_patch.cpu(), want.worst_patch) and int(want.worst_patch[1]) == 3
    assert torch.equal(ours.worst_start.cpu(), want.worst_start)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_fold_property(backend):
    @given(
        size=st.integers(1, 24),
        data=st.data(),
    )
    @settings(max_examples=40, deadline=None)
    def run(size, data):
        stride = data.draw(st.integers(1, size))
        h = data.draw(st.integers(size, 90))
        w = data.draw(st.integers(size, 90))
        grid = PatchGrid(h, w, size, stride)
        maps = torch.randn(grid.count, data.draw(st.sampled_from([1, 3])), size, size)
        for mode in ("mean", "sum", "max"):
            ours = igd_fast.fold_patch_maps(maps.cuda(), grid, mode, backend=backend)
            torch.testing.assert_close(ours.cpu(), ref.fold_patch_maps(maps, h, w, size, stride, mode), **TOL)

    run()


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_scoring_pipeline_and_gradient(backend):
    images = torch.randn(4, 3, 256, 256, dtype=torch.float64)
    patches, grid = igd_fast.extract_patches(images)
    recon = patches + 0.2 * torch.randn_like(patches)
    r_ref = recon.clone().requires_grad_(True)
    want_s, want_m = ref.patch_scores(patches, r_ref, LOCAL)
    ref.fold_patch_maps(want_m, 256, 256, 32, 16, "mean").mean().backward()
    p, r = patches.cuda().float(), recon.cuda().float().requires_grad_(True)
    scores, maps = igd_fast.patch_scores(p, r, backend=backend)
    torch.testing.assert_close(scores.detach().cpu().double(), want_s.detach(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(maps.detach().cpu().double(), want_m.detach(), atol=1e-4, rtol=1e-4)
    pixel = igd_fast.fold_patch_maps(maps, grid, backend=backend)
    pixel.mean().backward()
    scale = float(r_ref.grad.abs().max())
    torch.testing.assert_close(r.grad.cpu().double(), r_ref.grad, atol=1e-2 * scale, rtol=1e-2)  # fp32 vs fp64 at kinks
    res = igd_fast.anomaly_map(scores, grid, backend=backend)
    want = ref.anomaly_map(want_s.detach().view(4, -1), 256, 256, 32, 16)
    torch.testing.assert_close(res.image_score.cpu().double(), want[1], atol=1e-4, rtol=1e-4)
