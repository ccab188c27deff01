"""Patch family: grid geometry, extraction, scoring, folding and max-pooled maps.

Every available backend against the reference (unfold/fold), the reference against
the published code's F.fold and against brute-force loops on tiny shapes.
"""

import functools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import igd_fast
from igd_fast import LOCAL, MSSSIMConfig, PatchGrid
from igd_fast.ops import patches as ops_patches
from igd_fast.reference import patches as ref

TOL = {"atol": 1e-5, "rtol": 1e-5}
KERNEL_BACKENDS = [b for b in ("cpu", "cuda", "triton") if igd_fast.backends()[b]]
CPU_BACKENDS = [b for b in KERNEL_BACKENDS if b != "cuda"]
# 2 scales of a 3×3 window: patches from 5×5 up can be scored
SMALL = MSSSIMConfig(win_size=3, weights=(0.4, 0.6))


@st.composite
def geometries(draw, max_len=40, max_size=12):
    """(N, C, H, W, size, stride): square, non-square, odd; stride < size and = size."""
    size = draw(st.integers(1, max_size))
    stride = draw(st.one_of(st.just(size), st.integers(1, size)))
    h = draw(st.integers(size, max(size, max_len)))
    w = draw(st.one_of(st.just(h), st.integers(size, max(size, max_len))))
    return draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 3])), h, w, size, stride


def _devices(backend):
    return "cuda" if backend == "cuda" else "cpu"


def _max_examples(backend):
    return 6 if backend == "triton" else 40  # the Triton interpreter is slow


# ---------------------------------------------------------------- geometry


@given(length=st.integers(1, 300), size=st.integers(1, 64), stride=st.integers(1, 64))
@settings(max_examples=200, deadline=None)
def test_grid_edge_rule(length, size, stride):
    if size > length or stride > size:
        with pytest.raises(ValueError):
            PatchGrid(length, length, size, stride)
        return
    g = PatchGrid(length, length + 1, size, stride)
    rows = list(g.rows)
    assert rows[0] == 0 and rows[-1] == length - size
    assert all(b - a == stride for a, b in zip(rows[:-2], rows[1:-1]))
    assert all(0 < b - a <= stride for a, b in zip(rows[:-1], rows[1:]))
    # the closed form every kernel uses
    assert rows == [min(i * stride, length - size) for i in range(-(-(length - size) // stride) + 1)]
    covered = torch.zeros(length, dtype=torch.bool)
    for r in rows:
        covered[r : r + size] = True
    assert bool(covered.all())


def test_grid_defaults_and_positions():
    g = PatchGrid(256, 256)
    assert (g.size, g.stride, g.n_rows, g.n_cols, g.count) == (32, 16, 15, 15, 225)
    g = PatchGrid(40, 70, 32, 16)
    assert g.rows == (0, 8) and g.cols == (0, 16, 32, 38)
    assert g.start(5) == (8, 16)
    assert g.starts().tolist()[5] == [8, 16]
    with pytest.raises(IndexError):
        g.start(8)


def test_grid_errors_name_the_sizes():
    with pytest.raises(ValueError, match=r"20×40.*32×32"):
        PatchGrid(20, 40, 32, 16)
    with pytest.raises(ValueError, match="stride"):
        PatchGrid(64, 64, 8, 9)
    with pytest.raises(ValueError, match="smaller than one 32×32 patch"):
        igd_fast.extract_patches(torch.zeros(1, 3, 31, 64))


# ---------------------------------------------------------------- extraction


@given(geo=geometries())
@settings(max_examples=60, deadline=None)
def test_extract_matches_unfold_reference_and_slicing(geo):
    n, c, h, w, size, stride = geo
    x = torch.randn(n, c, h, w)
    patches, grid = igd_fast.extract_patches(x, size, stride)
    assert patches.is_contiguous() and patches.shape == (n * grid.count, c, size, size)
    torch.testing.assert_close(patches, ref.extract_patches(x, size, stride), atol=0, rtol=0)
    k = grid.count - 1  # the bottom-right patch is the flush one when the grid needs it
    r, col = grid.start(k)
    torch.testing.assert_close(patches[(n - 1) * grid.count + k], x[n - 1, :, r : r + size, col : col + size])


@given(geo=geometries())
@settings(max_examples=60, deadline=None)
def test_the_exported_graphs_row_gathers_equal_the_unfold_reference(geo):
    n, c, h, w, size, stride = geo
    x = torch.randn(n, c, h, w)
    want = ref.extract_patches(x, size, stride)
    torch.testing.assert_close(ref.gather_patches(x, size, stride), want, atol=0, rtol=0)


@pytest.mark.parametrize("h,w,size,stride", [(37, 45, 8, 5), (40, 44, 8, 4)])  # irregular, regular grid
def test_extract_gradient_is_sum_fold(h, w, size, stride):
    x = torch.randn(2, 3, h, w, requires_grad=True)
    patches, grid = igd_fast.extract_patches(x, size, stride)
    g = torch.randn_like(patches)
    (patches * g).sum().backward()
    torch.testing.assert_close(x.grad, igd_fast.fold_patch_maps(g, grid, "sum", backend="torch"), **TOL)


# ---------------------------------------------------------------- folding


def _check_fold(backend, geo):
    n, c, h, w, size, stride = geo
    dev = _devices(backend)
    grid = PatchGrid(h, w, size, stride)
    maps = torch.randn(n * grid.count, c, size, size, device=dev)
    for mode in ("mean", "sum", "max"):
        ours = igd_fast.fold_patch_maps(maps, grid, mode, backend=backend)
        want = igd_fast.fold_patch_maps(maps.cpu(), grid, mode, backend="torch")
        assert ours.shape == (n, c, h, w) and ours.dtype == maps.dtype
        torch.testing.assert_close(ours.cpu(), want, **TOL)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_fold_matches_reference(backend):
    @given(geo=geometries(max_len=40 if backend != "triton" else 24))
    @settings(max_examples=_max_examples(backend), deadline=None)
    def run(geo):
        _check_fold(backend, geo)

    run()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_fold_dtypes(backend, dtype):
    grid = PatchGrid(20, 27, 8, 6)
    maps = torch.randn(grid.count, 2, 8, 8).to(dtype)
    for mode in ("mean", "sum", "max"):
        ours = igd_fast.fold_patch_maps(maps, grid, mode, backend=backend)
        want = igd_fast.fold_patch_maps(maps.double(), grid, mode, backend="torch")
        assert ours.dtype == dtype
        tol = TOL if dtype == torch.float64 else {"atol": 5e-3, "rtol": 5e-3}
        torch.testing.assert_close(ours.double(), want, **tol)


@pytest.mark.parametrize("size,stride", [(32, 16), (8, 8), (7, 3)])
def test_fold_sum_is_published_F_fold_and_mean_averages(size, stride):
    h, w = 2 * stride + size, 3 * stride + size  # regular grids: F.fold covers them
    grid = PatchGrid(h, w, size, stride)
    maps = torch.randn(2 * grid.count, 3, size, size)
    cols = maps.view(2, grid.count, 3 * size * size).permute(0, 2, 1)
    published = F.fold(cols, (h, w), size, stride=stride)
    coverage = F.fold(torch.ones_like(cols), (h, w), size, stride=stride)
    for backend in ["torch", *CPU_BACKENDS]:
        torch.testing.assert_close(igd_fast.fold_patch_maps(maps, grid, "sum", backend=backend), published, **TOL)
        mean = igd_fast.fold_patch_maps(maps, grid, "mean", backend=backend)
        torch.testing.assert_close(mean, published / coverage, **TOL)
    torch.testing.assert_close(grid.coverage(), coverage[0, 0])


@pytest.mark.parametrize("backend", ["torch", *CPU_BACKENDS])
def test_fold_mean_of_extracted_patches_is_the_image(backend):
    x = torch.randn(1, 3, 45, 38)
    patches, grid = igd_fast.extract_patches(x, 16, 6)
    torch.testing.assert_close(igd_fast.fold_patch_maps(patches, grid, "mean", backend=backend), x, **TOL)
    torch.testing.assert_close(igd_fast.fold_patch_maps(patches, grid, "max", backend=backend), x, **TOL)


def test_fold_max_brute_force():
    grid = PatchGrid(13, 11, 5, 3)
    maps = torch.randn(grid.count, 1, 5, 5)
    want = torch.full((13, 11), float("-inf"))
    for p in range(grid.count):
        r, c = grid.start(p)
        want[r : r + 5, c : c + 5] = torch.maximum(want[r : r + 5, c : c + 5], maps[p, 0])
    for backend in ["torch", *CPU_BACKENDS]:
        torch.testing.assert_close(igd_fast.fold_patch_maps(maps, grid, "max", backend=backend)[0, 0], want)


# the backward is the same torch gather for every backend: the interpreter adds nothing
@pytest.mark.parametrize("backend", ["torch", *[b for b in CPU_BACKENDS if b != "triton"]])
@pytest.mark.parametrize("mode", ["mean", "sum"])
def test_fold_gradcheck(backend, mode):
    grid = PatchGrid(11, 9, 5, 3)
    maps = torch.randn(grid.count, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    fold = functools.partial(igd_fast.fold_patch_maps, grid=grid, mode=mode, backend=backend)
    assert torch.autograd.gradcheck(fold, (maps,), fast_mode=True)


def test_fold_max_has_no_gradient():
    grid = PatchGrid(8, 8, 4, 4)
    maps = torch.randn(grid.count, 1, 4, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match="not differentiable"):
        igd_fast.fold_patch_maps(maps, grid, "max").sum().backward()


def test_fold_input_errors():
    grid = PatchGrid(64, 64, 32, 16)
    with pytest.raises(ValueError, match="multiple"):
        igd_fast.fold_patch_maps(torch.zeros(10, 1, 32, 32), grid)
    with pytest.raises(ValueError, match="32×32"):
        igd_fast.fold_patch_maps(torch.zeros(9, 1, 16, 16), grid)
    with pytest.raises(ValueError, match="mode"):
        igd_fast.fold_patch_maps(torch.zeros(9, 1, 32, 32), grid, "median")
    with pytest.raises(TypeError):
        igd_fast.fold_patch_maps(torch.zeros(9, 1, 32, 32), (64, 64, 32, 16))


def test_ops_pass_opcheck():
    grid = PatchGrid(20, 23, 8, 5)
    maps = torch.randn(2 * grid.count, 3, 8, 8, requires_grad=True)
    for backend in ["torch", *CPU_BACKENDS]:
        for mode in ("mean", "sum"):
            torch.library.opcheck(ops_patches.fold_patch_maps_op, (maps, *grid.scalars(), mode, backend))
        scores = torch.randn(2, grid.count)
        torch.library.opcheck(
            ops_patches.anomaly_map_op,
            (scores, *grid.scalars(), backend),
            test_utils=("test_schema", "test_faketensor"),
        )


# ---------------------------------------------------------------- max-pooled anomaly map


def _check_anomaly(backend, geo):
    n, _, h, w, size, stride = geo
    grid = PatchGrid(h, w, size, stride)
    scores = torch.randn(n * grid.count, device=_devices(backend))
    scores[-1] = scores.max()  # a tie: the first maximum must win everywhere
    ours = igd_fast.anomaly_map(scores, grid, backend=backend)
    want = igd_fast.anomaly_map(scores.cpu(), grid, backend="torch")
    torch.testing.assert_close(ours.pixel_map.cpu(), want.pixel_map, **TOL)
    torch.testing.assert_close(ours.image_score.cpu(), want.image_score, **TOL)
    assert torch.equal(ours.worst_patch.cpu(), want.worst_patch)
    assert torch.equal(ours.worst_start.cpu(), want.worst_start)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_anomaly_map_matches_reference(backend):
    @given(geo=geometries(max_len=40 if backend != "triton" else 24))
    @settings(max_examples=_max_examples(backend), deadline=None)
    def run(geo):
        _check_anomaly(backend, geo)

    run()


def test_anomaly_map_brute_force():
    grid = PatchGrid(21, 17, 6, 4)
    scores = torch.randn(2, grid.count)
    res = igd_fast.anomaly_map(scores, grid, backend="torch")
    for n in range(2):
        want = torch.full((21, 17), float("-inf"))
        for p in range(grid.count):
            r, c = grid.start(p)
            want[r : r + 6, c : c + 6].clamp_(min=float(scores[n, p]))
        torch.testing.assert_close(res.pixel_map[n, 0], want)
        k = int(scores[n].argmax())
        assert int(res.worst_patch[n]) == k and tuple(res.worst_start[n].tolist()) == grid.start(k)
        assert float(res.image_score[n]) == float(scores[n].max())


def test_anomaly_map_errors():
    grid = PatchGrid(64, 64, 32, 16)
    with pytest.raises(ValueError, match="P = 9"):
        igd_fast.anomaly_map(torch.zeros(10), grid)
    with pytest.raises(ValueError, match="P = 9"):
        igd_fast.anomaly_map(torch.zeros(9, 2), grid)
    assert igd_fast.anomaly_map(torch.zeros(2, 9), grid).pixel_map.shape == (2, 1, 64, 64)


# ---------------------------------------------------------------- scoring


@functools.cache
def _ssim_kernels_present(backend: str) -> bool:
    """Whether this build registers the SSIM kernels that patch_scores runs on."""
    x = torch.rand(1, 1, 8, 8)
    try:
        igd_fast.ms_ssim(x, x, SMALL, backend=backend)
    except (RuntimeError, NotImplementedError):
        return False
    return True


def _score_pair(n_patches, c, size, dtype=torch.float32):
    x = torch.randn(n_patches, c, size, size, dtype=dtype)
    return x, x + 0.3 * torch.randn_like(x)


def test_patch_scores_reference_definition():
    x, y = _score_pair(12, 3, 32)
    extra = torch.rand(12)
    scores, maps = igd_fast.patch_scores(x, y, extra=extra, backend="torch")
    torch.testing.assert_close(scores - extra, igd_fast.recon_loss(x, y, 0.15, LOCAL, "none", backend="torch"), **TOL)
    torch.testing.assert_close(maps, igd_fast.recon_error_map(x, y, 0.15, LOCAL, backend="torch"), **TOL)
    want_s, want_m = ref.patch_scores(x, y, LOCAL, 0.15, extra)
    torch.testing.assert_close(scores, want_s, **TOL)
    torch.testing.assert_close(maps, want_m, **TOL)
    s2, none = igd_fast.patch_scores(x, y, want_maps=False, backend="torch")
    assert none is None
    torch.testing.assert_close(s2, scores - extra, **TOL)


@pytest.mark.parametrize("backend", ["torch", *CPU_BACKENDS])
def test_patch_scores_match_reference(backend):
    if not _ssim_kernels_present(backend):
        pytest.skip(f"the SSIM kernels are not in this build for backend {backend!r}")
    small = backend == "triton"

    @given(
        size=st.sampled_from([8, 11] if small else [5, 8, 17, 32]),
        stride=st.sampled_from([3, 8]),
        c=st.sampled_from([1, 3]),
        rho=st.floats(0.0, 1.0),
    )
    @settings(max_examples=4 if small else 12, deadline=None)
    def run(size, stride, c, rho):
        config = SMALL if size < LOCAL.min_size else LOCAL
        img = torch.randn(1, c, size + stride + 1, size + 1)
        patches, grid = igd_fast.extract_patches(img, size, min(stride, size))
        recon = patches + 0.3 * torch.randn_like(patches)
        scores, maps = igd_fast.patch_scores(patches, recon, config, rho, backend=backend)
        want_s, want_m = ref.patch_scores(patches, recon, config, rho)
        torch.testing.assert_close(scores, want_s, **TOL)
        torch.testing.assert_close(maps, want_m, **TOL)

    run()


@pytest.mark.parametrize("backend", ["torch", *CPU_BACKENDS])
def test_patch_scores_gradient_wrt_recon(backend):
    if not _ssim_kernels_present(backend):
        pytest.skip(f"the SSIM kernels are not in this build for backend {backend!r}")
    x, y = _score_pair(2, 2, 17, torch.float64)
    y1 = y.clone().requires_grad_(True)
    scores, maps = igd_fast.patch_scores(x, y1, backend=backend)
    (scores.sum() + maps.mean()).backward()
    y2 = y.clone().requires_grad_(True)
    want_s, want_m = ref.patch_scores(x, y2, LOCAL)
    (want_s.sum() + want_m.mean()).backward()
    torch.testing.assert_close(y1.grad, y2.grad, atol=1e-7, rtol=1e-6)


def test_patch_scores_input_errors():
    x, y = _score_pair(4, 3, 32)
    with pytest.raises(ValueError, match="same shape"):
        igd_fast.patch_scores(x, y[:3])
    with pytest.raises(ValueError, match="one value per patch"):
        igd_fast.patch_scores(x, y, extra=torch.zeros(3), backend="torch")
    with pytest.raises(ValueError, match="at least 17"):
        igd_fast.patch_scores(x[..., :16, :16], y[..., :16, :16])


def test_pipeline_end_to_end_on_cpu():
    """extract -> score -> fold -> max-pool: the anomalous region wins."""
    img = torch.randn(2, 3, 96, 80)
    patches, grid = igd_fast.extract_patches(img)
    recon = patches.clone()
    recon += 0.05 * torch.randn_like(recon)
    hit = [p for p in range(grid.count) if grid.start(p) == (64, 48)][0]
    recon[grid.count + hit] += 2.0  # image 1, bottom-right patch badly reconstructed
    scores, maps = igd_fast.patch_scores(patches, recon, backend="torch")
    pixel = igd_fast.fold_patch_maps(maps, grid)
    res = igd_fast.anomaly_map(scores, grid)
    assert pixel.shape == (2, 1, 96, 80)
    assert float(res.image_score[1]) > float(res.image_score[0])
    assert int(res.worst_patch[1]) == hit and res.worst_start[1].tolist() == [64, 48]
    assert float(pixel[1, 0, 64:, 48:].mean()) > float(pixel[1, 0, :32, :32].mean())
