"""Every compiled / Triton SSIM backend against the pure-PyTorch reference (``torch``).

Values and maps within 1e-5, gradients within 1e-4 relative (to the largest reference
gradient), across random shapes, layouts and input relations. Triton runs interpreted
on CPU-only machines, so it only gets small shapes, few scales and small windows.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

import igd_fast
from igd_fast import GLOBAL, LOCAL, MSSSIMConfig
from igd_fast.ops.backends import ssim_kernels
from igd_fast.reference import ssim as ref

_KERNEL_MODULES = {"cpu": "igd_fast._C", "cuda": "igd_fast._C", "triton": "igd_fast.kernels.ssim"}
BACKENDS = [
    b
    for b, ok in igd_fast.backends().items()
    if ok and b != "torch" and importlib.util.find_spec(_KERNEL_MODULES[b]) is not None
]
INTERPRETED_TRITON = not torch.cuda.is_available()

CUSTOM = MSSSIMConfig(win_size=7, sigma=1.2, weights=(0.2, 0.3, 0.5))
TINY = MSSSIMConfig(win_size=5, weights=(0.4, 0.6))  # min size 9
# (config, smallest H/W, largest H/W) per backend; SPEC sizes for the full configs.
FULL_CASES = [(GLOBAL, 161, 200), (LOCAL, 17, 40), (CUSTOM, 25, 60), (TINY, 9, 40)]
SMALL_CASES = [(LOCAL, 17, 40), (CUSTOM, 25, 48), (TINY, 9, 40)]
LAYOUTS = ("contiguous", "channels_last", "transposed", "sliced")



def _settings(backend: str, examples: int = 10):
    # The Triton interpreter is slow: fewer (and smaller) examples there.
    n = max(3, examples // 3) if backend == "triton" and INTERPRETED_TRITON else examples
    return settings(max_examples=n, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _device(backend: str) -> str:
    return "cpu" if backend == "cpu" or (backend == "triton" and INTERPRETED_TRITON) else "cuda"


def _cases(backend: str):
    return SMALL_CASES if backend == "triton" and INTERPRETED_TRITON else FULL_CASES


def _layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """Same values as ``t``, other memory layout (non-contiguous except 'contiguous')."""
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "transposed":
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    if layout == "sliced":
        wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
        wide[..., ::2] = t
        return wide[..., ::2]
    return t


def _pair(shape, relation: str, seed: int, device: str, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    if relation == "identical":
        y = x.clone()
    elif relation == "anti":
        y = -x
    else:
        y = x + 0.5 * torch.randn(shape, generator=g, dtype=torch.float64)
    return x.to(device, dtype), y.to(device, dtype)


@st.composite
def problems(draw, backend: str, relations=("noisy", "noisy", "identical", "anti")):
    cfg, lo, hi = draw(st.sampled_from(_cases(backend)))
    h = draw(st.one_of(st.just(lo), st.integers(lo, hi)))
    w = draw(st.one_of(st.just(lo), st.integers(lo, hi)))
    n = draw(st.sampled_from([1, 2]))
    c = draw(st.sampled_from([1, 3]))
    layout = draw(st.sampled_from(LAYOUTS))
    relation = draw(st.sampled_from(relations))
    seed = draw(st.integers(0, 2**31 - 1))
    x, y = _pair((n, c, h, w), relation, seed, _device(backend))
    return cfg, _layout(x, layout), _layout(y, layout), relation


def _close_values(a, b, atol=1e-5):
    torch.testing.assert_close(a.double(), b.double(), atol=atol, rtol=0)


def _well_conditioned(maps, win_size, h, w):
    """Pixels where no resized map is near zero: there the bilinear interpolation
    cancels, its float rounding (a few ulps of the largest tap) becomes a large
    relative error, and the power w_j amplifies it, so two correct float
    implementations that round in another order (with or without FMA) disagree."""
    ok = torch.ones((), dtype=torch.bool)
    for m in maps:
        m = m.double().cpu()
        u = ref.upsample_scale_map(m, win_size, h, w)
        ok = ok & (u.abs() > 3e-2 * m.abs().amax(dim=(-2, -1), keepdim=True))
    return ok


def _close_grad(a, b, rtol=1e-4):
    scale = float(b.abs().max())
    torch.testing.assert_close(a.double(), b.double(), atol=rtol * scale, rtol=rtol)


def _grads(fn, x, y, backend):
    xr = x.detach().clone().requires_grad_(True)
    yr = y.detach().clone().requires_grad_(True)
    fn(xr, yr, backend).backward()
    return xr.grad, yr.grad


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


def test_some_backend_is_tested():
    assert "cpu" in BACKENDS, f"the C++ backend should be built here: {igd_fast.backends()}"


# ------------------------------------------------------------------ public API


def test_ms_ssim_and_map_match_reference(backend):
    @_settings(backend)
    @given(problems(backend))
    def run(p):
        cfg, x, y, relation = p
        got = igd_fast.ms_ssim(x, y, cfg, reduction="none", backend=backend)
        want = igd_fast.ms_ssim(x, y, cfg, reduction="none", backend="torch")
        _close_values(got, want)
        got_map = igd_fast.ms_ssim_map(x, y, cfg, backend=backend)
        want_map = igd_fast.ms_ssim_map(x, y, cfg, backend="torch")
        assert got_map.shape == (x.shape[0], 1, *x.shape[-2:])
        _close_values(got_map, want_map)
        if relation == "identical":
            _close_values(got, torch.ones_like(got), atol=1e-6)
            _close_values(got_map, torch.ones_like(got_map), atol=1e-6)
        if relation == "anti":
            # y = -x: negative structure at the finest scale, so relu zeroes MS-SSIM.
            assert float(got.max()) < 0.05

    run()


LOSSES = {
    "ms_ssim": lambda x, y, cfg, b: igd_fast.ms_ssim(x, y, cfg, backend=b),
    "recon_loss": lambda x, y, cfg, b: igd_fast.recon_loss(x, y, config=cfg, reduction="sum", backend=b),
}


def test_gradients_match_reference(backend):
    @_settings(backend)
    @given(problems(backend, relations=("noisy", "noisy", "anti")), st.sampled_from([*LOSSES, "ms_ssim_map"]))
    def run(p, loss):
        cfg, x, y, _ = p
        if loss == "ms_ssim_map":
            g = torch.Generator().manual_seed(1)
            up = torch.randn(x.shape[0], 1, *x.shape[-2:], generator=g).to(x.device)

            def fn(a, b, bk):
                return (igd_fast.ms_ssim_map(a, b, cfg, backend=bk) * up).sum()
        else:

            def fn(a, b, bk):
                return LOSSES[loss](a, b, cfg, bk)

        gx, gy = _grads(fn, x, y, backend)
        rx, ry = _grads(fn, x, y, "torch")
        _close_grad(gx, rx)
        _close_grad(gy, ry)

    run()


def test_gradient_wrt_reconstruction_only(backend):
    """need_gx = False path: x without requires_grad."""
    cfg = LOCAL
    x, y = _pair((2, 3, 33, 37), "noisy", 5, _device(backend))
    grads = []
    for b in (backend, "torch"):
        yr = y.clone().requires_grad_(True)
        igd_fast.recon_loss(x, yr, config=cfg, backend=b).backward()
        grads.append(yr.grad)
    _close_grad(*grads)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_accumulate_in_float32(backend, dtype):
    cfg = LOCAL
    x, y = _pair((2, 3, 37, 33), "noisy", 7, _device(backend), dtype)
    got = igd_fast.ms_ssim(x, y, cfg, reduction="none", backend=backend)
    assert got.dtype == torch.float32
    # Same pipeline on the same input (pooling between scales rounds to ``dtype``).
    _close_values(got, igd_fast.ms_ssim(x, y, cfg, reduction="none", backend="torch"))
    got_map = igd_fast.ms_ssim_map(x, y, cfg, backend=backend)
    _close_values(got_map, igd_fast.ms_ssim_map(x, y, cfg, backend="torch"))
    # The upcast input differs only by that rounding at the coarser scales.
    want = igd_fast.ms_ssim(x.float(), y.float(), cfg, reduction="none", backend="torch")
    _close_values(got, want, atol=2e-4)
    _close_values(got_map, igd_fast.ms_ssim_map(x.float(), y.float(), cfg, backend="torch"), atol=2e-3)
    gx, gy = _grads(lambda a, b, bk: igd_fast.recon_loss(a, b, config=cfg, backend=bk), x, y, backend)
    assert gx.dtype == dtype and gy.dtype == dtype
    rx, ry = _grads(lambda a, b, bk: igd_fast.recon_loss(a, b, config=cfg, backend=bk), x.float(), y.float(), "torch")
    eps = torch.finfo(dtype).eps
    _close_grad(gx, rx, rtol=2 * eps)
    _close_grad(gy, ry, rtol=2 * eps)


def test_float64_stays_float64(backend):
    if backend == "triton" and not INTERPRETED_TRITON:
        pytest.skip("float64 is not a Triton GPU target")
    x, y = _pair((1, 2, 40, 41), "noisy", 3, _device(backend), torch.float64)
    got = igd_fast.ms_ssim(x, y, CUSTOM, reduction="none", backend=backend)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, igd_fast.ms_ssim(x, y, CUSTOM, reduction="none", backend="torch"),
                               atol=1e-12, rtol=0)


# ------------------------------------------------------------------ entry points


WINDOWS = [1, 3, 5, 7, 9, 11, 13, 15]


def test_entry_points_match_reference(backend):
    """ssim_scale / ssim_scale_backward of one scale, every window size, map gradients."""
    mod = ssim_kernels(backend)
    dev = _device(backend)
    small = backend == "triton" and INTERPRETED_TRITON

    @_settings(backend, 16)
    @given(
        k=st.sampled_from(WINDOWS[:4] if small else WINDOWS),
        extra_h=st.integers(0, 20 if small else 60),
        extra_w=st.integers(0, 20 if small else 60),
        c=st.sampled_from([1, 3]),
        need_gx=st.booleans(),
        with_maps=st.booleans(),
        seed=st.integers(0, 2**31 - 1),
    )
    def run(k, extra_h, extra_w, c, need_gx, with_maps, seed):
        sigma, c1, c2 = 1.5, GLOBAL.c1, GLOBAL.c2
        x, y = _pair((2, c, k + extra_h, k + extra_w), "noisy", seed, dev)
        got = mod.ssim_scale(x, y, k, sigma, c1, c2, True)
        want = ref.ssim_scale(x, y, k, sigma, c1, c2, True)
        # k = 1: every variance is a cancellation of x^2 - x^2, kept to float32 rounding.
        atol = 2e-5 if k == 1 else 1e-5
        for a, b in zip(got, want):
            assert a.shape == b.shape and a.dtype == b.dtype
            _close_values(a, b, atol)
        g = torch.Generator().manual_seed(seed + 1)
        gs, gc = (torch.randn(2, c, generator=g).to(dev) for _ in range(2))
        if with_maps:
            gsm, gcm = (torch.randn(want[2].shape, generator=g).to(dev) for _ in range(2))
        else:
            gsm = gcm = torch.empty(0, device=dev)
        got_g = mod.ssim_scale_backward(x, y, k, sigma, c1, c2, gs, gc, gsm, gcm, need_gx)
        want_g = ref.ssim_scale_backward(x, y, k, sigma, c1, c2, gs, gc, gsm, gcm, need_gx)
        assert got_g[0].numel() == (x.numel() if need_gx else 0)
        if need_gx:
            _close_grad(got_g[0], want_g[0], 1e-4 if k > 1 else 1e-3)
        _close_grad(got_g[1], want_g[1], 1e-4 if k > 1 else 1e-3)

    run()


def test_combine_maps_entry_point(backend):
    mod = ssim_kernels(backend)
    dev = _device(backend)

    @_settings(backend)
    @given(
        cfg_case=st.sampled_from(_cases(backend)),
        extra=st.integers(0, 15),
        seed=st.integers(0, 2**31 - 1),
    )
    def run(cfg_case, extra, seed):
        cfg, lo, _ = cfg_case
        h, w = lo + extra, lo + 2 * extra + 1
        g = torch.Generator().manual_seed(seed)
        maps, sh, sw = [], h, w
        for _ in range(cfg.scales):
            # Include negative values: relu must zero them after upsampling.
            m = torch.rand(2, 3, sh - cfg.win_size + 1, sw - cfg.win_size + 1, generator=g)
            maps.append((m * 1.2 - 0.1).to(dev))
            sh, sw = (sh + 1) // 2, (sw + 1) // 2
        got = mod.combine_maps(maps, list(cfg.weights), h, w, cfg.win_size)
        want = ref.combine_maps(maps, list(cfg.weights), h, w, cfg.win_size)
        assert got.shape == want.shape == (2, 3, h, w)
        ok = _well_conditioned(maps, cfg.win_size, h, w).to(got.device)
        assert ok.float().mean() > 0.75
        _close_values(got[ok], want[ok])

    run()


@pytest.mark.parametrize("weight", [0.37, 1.0, 2.5])
def test_combine_maps_special_values(backend, weight):
    """relu(v)^w at the edges of the log-domain product: zero, negatives, NaN (the
    reference's relu gives 0), subnormals, infinity and exactly 1, each against the
    reference (relative 1e-5; the power of a tiny value keeps only ~1e-6 relative)."""
    vals = [0.0, -0.5, float("nan"), 1e-30, 1e-40, 1.0, 0.5, 3.0, float("inf"), 1e-7, 0.999999, 2.0**-126,
            -0.0, float("-inf")]
    m = torch.tensor(vals).view(1, 1, 1, -1)
    # With a second, resized scale: finite (PyTorch's resize itself turns 0 * inf into
    # NaN), and no inf at scale 0 (inf times a zero factor: the reference gives NaN,
    # the kernels 0; SSIM maps lie in [-1, 1], so only direct calls can meet it).
    m_fin = torch.nan_to_num(m, nan=float("nan"), posinf=5.0)
    maps = [m_fin, torch.tensor([0.5, 2.0, -1.0, 0.25]).view(1, 1, 1, 4)]
    for ms, ws in (([m], [weight]), (maps, [weight, 0.5])):
        got = ssim_kernels(backend).combine_maps([t.to(_device(backend)) for t in ms], ws, 1, len(vals), 1)
        want = ref.combine_maps(ms, ws, 1, len(vals), 1)
        torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=0, equal_nan=True)
    ones = ssim_kernels(backend).combine_maps([torch.ones(1, 1, 3, 5, device=_device(backend))], [weight], 3, 5, 1)
    assert bool((ones == 1).all())  # log2(1) is exactly 0 and exp2(0) exactly 1


@pytest.mark.skipif("cpu" not in BACKENDS, reason="no C++ extension")
def test_cpu_ops_directly():
    """The registered torch.ops.igd_fast_C ops, as other code calls them."""
    ops = torch.ops.igd_fast_C
    x, y = _pair((2, 3, 30, 29), "noisy", 11, "cpu")
    x_cl = x.contiguous(memory_format=torch.channels_last)
    s, cs, sm, cm = ops.ssim_scale(x_cl, y, 3, 1.5, LOCAL.c1, LOCAL.c2, False)
    assert sm.numel() == 0 and cm.numel() == 0 and sm.dtype == torch.float32
    ws, wcs, _, _ = ref.ssim_scale(x, y, 3, 1.5, LOCAL.c1, LOCAL.c2, False)
    _close_values(s, ws)
    _close_values(cs, wcs)
    g = torch.ones(2, 3)
    gx, gy = ops.ssim_scale_backward(x, y, 3, 1.5, LOCAL.c1, LOCAL.c2, g, g, torch.empty(0), torch.empty(0), False)
    assert gx.numel() == 0 and gy.shape == y.shape
    # Results do not depend on the thread count (row tiles change with it).
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.ssim_scale(x[:1, :1], y[:1, :1], 3, 1.5, LOCAL.c1, LOCAL.c2, True)
    finally:
        torch.set_num_threads(old)
    many = ops.ssim_scale(x[:1, :1], y[:1, :1], 3, 1.5, LOCAL.c1, LOCAL.c2, True)
    for a, b in zip(one, many):
        _close_values(a, b, atol=1e-7)


@pytest.mark.skipif("cpu" not in BACKENDS, reason="no C++ extension")
@pytest.mark.parametrize(
    "call,match",
    [
        (lambda o, x: o.ssim_scale(x, x[:, :1], 3, 1.5, 0.1, 0.1, False), "same shape"),
        (lambda o, x: o.ssim_scale(x, x, 4, 1.5, 0.1, 0.1, False), "odd"),
        (lambda o, x: o.ssim_scale(x, x, 3, -1.0, 0.1, 0.1, False), "sigma"),
        (lambda o, x: o.ssim_scale(x[..., :2], x[..., :2], 3, 1.5, 0.1, 0.1, False), "smaller"),
        (lambda o, x: o.ssim_scale(x, x.double(), 3, 1.5, 0.1, 0.1, False), "dtype"),
        (lambda o, x: o.ssim_scale(x[0], x[0], 3, 1.5, 0.1, 0.1, False), "4-D"),
        (lambda o, x: o.ssim_scale_backward(x, x, 3, 1.5, 0.1, 0.1, torch.ones(3), torch.ones(2, 3),
                                       torch.empty(0), torch.empty(0), True), "g_ssim_mean"),
        (lambda o, x: o.ssim_scale_backward(x, x, 3, 1.5, 0.1, 0.1, torch.ones(2, 3), torch.ones(2, 3),
                                       torch.ones(2, 3, 7, 7), torch.empty(0), True), "g_ssim_map"),
        (lambda o, x: o.combine_maps([x, x], [1.0], 8, 8, 3), "weights"),
        (lambda o, x: o.combine_maps([x, x[:1]], [1.0, 1.0], 8, 8, 3), "map 1"),
    ],
)
def test_cpu_ops_reject_bad_arguments(call, match):
    ssim_kernels("cpu")  # loads the extension (registers the ops)

    with pytest.raises(RuntimeError, match=match):
        call(torch.ops.igd_fast_C, torch.randn(2, 3, 10, 10))


@pytest.mark.skipif("cpu" not in BACKENDS, reason="no C++ extension")
def test_torch_compile_uses_fake_impls():
    """Tracing through the custom ops (fake impls + registered autograd) and running
    the compiled graph with our kernels gives the eager values and gradients."""
    torch._dynamo.reset()
    x, y = _pair((2, 3, 17, 20), "noisy", 13, "cpu")

    def loss(a, b):
        return igd_fast.recon_loss(a, b, config=LOCAL, backend="cpu")

    seen = []

    def backend(gm, example_inputs):
        seen.extend(str(n.target) for n in gm.graph.nodes)
        return torch._dynamo.backends.debugging.aot_eager(gm, example_inputs)

    compiled = torch.compile(loss, backend=backend, fullgraph=True)
    yc = y.clone().requires_grad_(True)
    out = compiled(x, yc)
    out.backward()
    ye = y.clone().requires_grad_(True)
    want = loss(x, ye)
    want.backward()
    _close_values(out, want, atol=1e-6)
    _close_grad(yc.grad, ye.grad)
    assert any("ssim_scale" in t for t in seen), "the custom op was not traced"


@pytest.mark.skipif("cpu" not in BACKENDS, reason="no C++ extension")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("h,w", [(1, 1), (2, 2), (7, 10), (33, 17), (64, 65)])
def test_cpu_downsample_matches_reference(dtype, h, w):
    """The between-scales 2×2 pool (odd sizes padded) and its backward, bit for bit in
    float32/64 (same summation order as avg_pool2d)."""
    ext = ssim_kernels("cpu")

    x = torch.randn(2, 3, h, w, dtype=torch.float64).to(dtype)
    want = ref.downsample(x)
    got = ext.downsample(x.transpose(-1, -2).contiguous().transpose(-1, -2))
    assert got.shape == want.shape and got.dtype == dtype
    exact = dtype in (torch.float32, torch.float64)
    torch.testing.assert_close(got, want, atol=0 if exact else 1e-2, rtol=0 if exact else 1e-2)
    g = torch.randn(want.shape, dtype=torch.float64).to(dtype)
    xr = x.clone().requires_grad_(True)
    (want_g,) = torch.autograd.grad(ref.downsample(xr), xr, g)
    torch.testing.assert_close(ext.downsample_backward(g, h, w), want_g, atol=0, rtol=0)


# ------------------------------------------------------------------ fused small-plane map


@pytest.mark.skipif("cpu" not in BACKENDS, reason="no C++ extension")
@settings(max_examples=25, deadline=None)
@given(
    st.sampled_from([1, 3, 5, 15]),
    st.integers(1, 4),
    st.integers(0, 40),
    st.integers(0, 90),
    st.sampled_from([1, 3]),
    st.sampled_from([torch.float32, torch.float64]),
    st.sampled_from(["noisy", "identical", "anti"]),
    st.integers(0, 2**31 - 1),
)
# found by a CI-like run: one float32 pixel 2.5e-5 apart (a near-zero contrast term under its 1/4 power)
@example(1, 4, 36, 72, 1, torch.float32, "anti", 69)
def test_fused_map_matches_reference(k, scales, dh, dw, c, dtype, relation, seed):
    """ms_ssim_fused (all scales, pools, combination and channel mean in one op) ==
    the reference's per-scale ops composed, from the minimum size up to 130 wide: both
    the one-pass path of small planes (<= 64 wide) and the per-scale path above it."""
    ext = ssim_kernels("cpu")

    weights = [1.0 / scales] * scales
    lo = 2 ** (scales - 1) * (k - 1) + 1  # smallest size that keeps every scale >= k
    assume(lo <= 64)
    h, w = min(lo + dh, 64), lo + dw
    x, y = _pair((2, c, h, w), relation, seed, "cpu", dtype)
    args = (k, 1.5, LOCAL.c1, LOCAL.c2, weights)
    got = ext.ms_ssim_fused(_layout(x, "transposed"), y, *args, True)
    want = ref.ms_ssim_fused(x, y, *args, True)
    # float32: both sides round in their own order, and a fractional power of a near-zero
    # contrast term amplifies that (see _well_conditioned); float64 stays at 1e-5
    atol = 1e-4 if dtype == torch.float32 else 1e-5
    for g, wnt in zip(got, want):
        assert g.shape == wnt.shape and g.dtype == dtype
        _close_values(g, wnt, atol)
    # without the map: the same means (bit for bit: the same scale kernels) and no map
    s_means, c_means, no_map = ext.ms_ssim_fused(x, y, *args, False)
    assert torch.equal(s_means, got[0]) and torch.equal(c_means, got[1]) and no_map.numel() == 0


@pytest.mark.skipif("cpu" not in BACKENDS, reason="no C++ extension")
@pytest.mark.parametrize(
    "cfg,shape,layout",
    [(GLOBAL, (2, 3, 161, 200), "channels_last"), (GLOBAL, (1, 1, 256, 256), "contiguous"),
     (LOCAL, (3, 3, 65, 97), "transposed")],
)
def test_fused_map_of_the_paper_configs(cfg, shape, layout):
    """The fused op on both SPEC configurations above the small-plane limit, against the
    reference composition and against the public map with gradients (per-scale ops)."""
    ext = ssim_kernels("cpu")

    x, y = _pair(shape, "noisy", 3, "cpu")
    args = (cfg.win_size, cfg.sigma, cfg.c1, cfg.c2, list(cfg.weights))
    got = ext.ms_ssim_fused(_layout(x, layout), y, *args, True)
    for g, wnt in zip(got, ref.ms_ssim_fused(x, y, *args, True)):
        _close_values(g, wnt)
    assert torch.equal(ext.ms_ssim_fused(x, y, *args, False)[0], got[0])
    per_scale = igd_fast.ms_ssim_map(x, y.clone().requires_grad_(True), cfg, backend="cpu")
    _close_values(got[2], per_scale.detach(), atol=1e-6)


@pytest.mark.skipif("cpu" not in BACKENDS, reason="no C++ extension")
def test_public_ops_take_the_fused_kernel_only_without_gradients(monkeypatch):
    from igd_fast.ops import ssim as ops_ssim

    calls = []
    real = ops_ssim.ms_ssim_fused
    monkeypatch.setattr(ops_ssim, "ms_ssim_fused", lambda *a: calls.append(a[7]) or real(*a))
    x, y = _pair((3, 3, 32, 32), "noisy", 5, "cpu")
    with torch.no_grad():
        fused = igd_fast.ms_ssim_map(x, y, LOCAL, backend="cpu")
        fused_value = igd_fast.ms_ssim(x, y, LOCAL, reduction="none", backend="cpu")
    assert calls == [True, False]  # want_map
    yr = y.clone().requires_grad_(True)
    unfused = igd_fast.ms_ssim_map(x, yr, LOCAL, backend="cpu")
    unfused_value = igd_fast.ms_ssim(x, yr, LOCAL, reduction="none", backend="cpu")
    assert calls == [True, False] and unfused.requires_grad and unfused_value.requires_grad
    _close_values(fused, unfused.detach(), atol=1e-6)
    assert torch.equal(fused_value, unfused_value.detach())
    big_x, big_y = _pair((1, 1, 17, 80), "noisy", 6, "cpu")  # the per-scale path inside
    with torch.no_grad():
        igd_fast.ms_ssim_map(big_x, big_y, LOCAL, backend="cpu")
        igd_fast.ms_ssim_map(big_x.half(), big_y.half(), LOCAL, backend="cpu")  # pools in fp16
    assert calls == [True, False, True]


@pytest.mark.skipif("cpu" not in BACKENDS, reason="no C++ extension")
@pytest.mark.parametrize(
    "shape,weights,match",
    [
        ((2, 3, 16, 80), [0.3, 0.3, 0.4], "scale 2 is 4×20, smaller than the 5×5 window"),
        ((2, 3, 16, 16), [], "at least one scale"),
        ((2, 3, 8, 8), [0.5, 0.5], "smaller than the 5×5 window"),
        ((2, 3, 16, 16, "half"), [1.0], "float32 or float64"),
    ],
)
def test_fused_map_rejects_bad_arguments(shape, weights, match):
    ssim_kernels("cpu")  # loads the extension (registers the ops)

    x = torch.randn(shape[:4]).to(torch.float16 if len(shape) > 4 else torch.float32)
    with pytest.raises(RuntimeError, match=match):
        torch.ops.igd_fast_C.ms_ssim_fused(x, x, 5, 1.5, 0.1, 0.1, weights, True)


@pytest.mark.skipif("cpu" not in BACKENDS, reason="no C++ extension")
@pytest.mark.parametrize("k,h,w", [(11, 24, 300), (3, 21, 513), (15, 30, 129), (1, 5, 257)])
def test_cpu_scale_kernels_on_wide_rows(k, h, w):
    """Rows wider than one 128-column strip (several strips, a short last one) and
    rows past 256 columns: one scale forward (means and maps) and backward vs the
    reference."""
    ext = ssim_kernels("cpu")

    x, y = _pair((2, 2, h, w), "noisy", k + w, "cpu")
    args = (k, 1.5, GLOBAL.c1, GLOBAL.c2)
    for got, want in zip(ext.ssim_scale(x, y, *args, True), ref.ssim_scale(x, y, *args, True)):
        _close_values(got, want)
    g_mean = torch.randn(2, 2, dtype=torch.float32)
    g_map = torch.randn(2, 2, h - k + 1, w - k + 1)
    got = ext.ssim_scale_backward(x, y, *args, g_mean, g_mean, g_map, torch.empty(0), True)
    want = ref.ssim_scale_backward(x, y, *args, g_mean, g_mean, g_map, torch.empty(0), True)
    for a, b in zip(got, want):
        _close_grad(a, b)
