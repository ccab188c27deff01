"""The GPU backends (``cuda`` and ``triton`` on CUDA tensors) against the reference at
the SPEC shapes: global config on 256×256, local config on 32×32 patches, gradients
included. Skipped on machines without a GPU."""

import pytest
import torch

import igd_fast
from igd_fast import GLOBAL, LOCAL, MSSSIMConfig
from igd_fast.ops.backends import ssim_kernels
from igd_fast.reference import ssim as ref

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

# "cuda_async" is the cuda backend with IGD_FAST_CUDA_ASYNC=1 (cp.async double-buffered
# staging of fp32/fp64 rows).
GPU_BACKENDS = [
    pytest.param(
        b,
        marks=pytest.mark.skipif(
            not (torch.cuda.is_available() and igd_fast.backends()[b.split("_")[0]]),
            reason=f"{b} backend not available",
        ),
    )
    for b in ("cuda", "cuda_async", "triton")
]


@pytest.fixture
def backend(request, monkeypatch):
    name = request.param
    monkeypatch.setenv("IGD_FAST_CUDA_ASYNC", "1" if name == "cuda_async" else "0")
    return name.split("_")[0]


def _pair(shape, noise=0.4, dtype=torch.float32, sign=1.0):
    x = torch.randn(shape, dtype=torch.float64)
    y = sign * x + noise * torch.randn(shape, dtype=torch.float64)
    return x.to("cuda", dtype), y.to("cuda", dtype)


def _args(cfg):
    return cfg.win_size, cfg.sigma, cfg.c1, cfg.c2


def _close_grad(a, b, tol=1e-4):
    scale = float(b.double().abs().max())
    torch.testing.assert_close(a.double(), b.double(), atol=tol * scale, rtol=tol)


@pytest.mark.parametrize("backend", GPU_BACKENDS, indirect=True)
@pytest.mark.parametrize(
    "cfg,shape",
    [
        (GLOBAL, (2, 3, 256, 256)),
        (LOCAL, (48, 3, 32, 32)),
        (GLOBAL, (1, 1, 161, 170)),
        (MSSSIMConfig(win_size=15, sigma=2.0), (3, 2, 33, 129)),
        (MSSSIMConfig(win_size=1), (1, 1, 5, 19)),
    ],
)
def test_scale_forward_and_backward(backend, cfg, shape):
    mod = ssim_kernels(backend)
    x, y = _pair(shape)
    got = mod.ssim_scale(x, y, *_args(cfg), True)
    want = ref.ssim_scale(x, y, *_args(cfg), True)
    for g, w in zip(got, want):
        assert g.dtype == torch.float32 and g.shape == w.shape
        torch.testing.assert_close(g, w, atol=1e-5, rtol=0)
    no_maps = mod.ssim_scale(x, y, *_args(cfg), False)
    assert no_maps[2].numel() == 0
    torch.testing.assert_close(no_maps[0], want[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(no_maps[1], want[1], atol=1e-5, rtol=0)

    n, c = shape[:2]
    g_s, g_cs = torch.randn(n, c, device="cuda"), torch.randn(n, c, device="cuda")
    g_sm, g_cm = torch.randn_like(want[2]), torch.randn_like(want[3])
    e = torch.empty(0, device="cuda")
    for maps in ((g_sm, g_cm), (e, e), (g_sm, e)):
        for need_gx in (True, False):
            gx, gy = mod.ssim_scale_backward(x, y, *_args(cfg), g_s, g_cs, *maps, need_gx)
            rx, ry = ref.ssim_scale_backward(x, y, *_args(cfg), g_s, g_cs, *maps, need_gx)
            _close_grad(gy, ry)
            if need_gx:
                _close_grad(gx, rx)
            else:
                assert gx.numel() == 0


@pytest.mark.parametrize("backend", GPU_BACKENDS, indirect=True)
@pytest.mark.parametrize("cfg,shape", [(GLOBAL, (4, 3, 256, 256)), (LOCAL, (225, 3, 32, 32))])
def test_public_api_values_maps_and_gradients(backend, cfg, shape):
    x, y = _pair(shape)
    torch.testing.assert_close(
        igd_fast.ms_ssim(x, y, cfg, "none", backend=backend), ref.ms_ssim(x, y, cfg, "none"), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        igd_fast.ms_ssim_map(x, y, cfg, backend=backend), ref.ms_ssim_map(x, y, cfg), atol=1e-5, rtol=0
    )
    grads = []
    for b in (backend, "torch"):
        xr, yr = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
        loss = igd_fast.recon_loss(xr, yr, config=cfg, backend=b)
        loss = loss + igd_fast.recon_error_map(xr, yr, config=cfg, backend=b).square().mean()
        loss.backward()
        grads.append((xr.grad, yr.grad))
    _close_grad(grads[0][0], grads[1][0])
    _close_grad(grads[0][1], grads[1][1])


@pytest.mark.parametrize("backend", GPU_BACKENDS, indirect=True)
def test_combine_maps(backend):
    x, y = _pair((2, 3, 256, 256))
    maps = []
    for j in range(GLOBAL.scales):
        s, cs, sm, cm = ref.ssim_scale(x, y, *_args(GLOBAL), True)
        maps.append(sm if j == GLOBAL.scales - 1 else cm)
        x, y = ref.downsample(x), ref.downsample(y)
    maps[2] = maps[2] - 0.5  # negative values exercise relu
    got = ssim_kernels(backend).combine_maps(maps, list(GLOBAL.weights), 256, 256, 11)
    want = ref.combine_maps(maps, list(GLOBAL.weights), 256, 256, 11)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", GPU_BACKENDS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes_layouts_and_edge_inputs(backend, dtype):
    mod = ssim_kernels(backend)
    x, y = _pair((2, 3, 64, 70), dtype=dtype)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    got = mod.ssim_scale(x, y, *_args(GLOBAL), True)
    want = ref.ssim_scale(x, y, *_args(GLOBAL), True)
    for g, w in zip(got, want):
        assert g.dtype == acc
        torch.testing.assert_close(g, w, atol=1e-5, rtol=0)
    g_s, g_cs = torch.randn(2, 3, device="cuda"), torch.randn(2, 3, device="cuda")
    e = torch.empty(0, device="cuda")
    gx, gy = mod.ssim_scale_backward(x, y, *_args(GLOBAL), g_s, g_cs, e, e, True)
    rx, ry = ref.ssim_scale_backward(x, y, *_args(GLOBAL), g_s, g_cs, e, e, True)
    assert gx.dtype == dtype and gy.dtype == dtype
    tol = 1e-4 if dtype == torch.float64 else 1e-2  # one rounding to the low precision
    _close_grad(gx, rx, tol)
    _close_grad(gy, ry, tol)
    # identical inputs -> 1, anti-correlated -> cs < 0, channels_last / strided views
    s, cs, _, _ = mod.ssim_scale(x, x, *_args(GLOBAL), False)
    torch.testing.assert_close(s, torch.ones_like(s), atol=1e-6, rtol=0)
    xa, ya = _pair((2, 3, 64, 70), noise=0.1, sign=-1.0)
    got = mod.ssim_scale(xa, ya, *_args(GLOBAL), False)
    want = ref.ssim_scale(xa, ya, *_args(GLOBAL), False)
    assert float(want[1].max()) < 0
    torch.testing.assert_close(got[1], want[1], atol=1e-5, rtol=0)
    xl, yl = xa.to(memory_format=torch.channels_last), ya.to(memory_format=torch.channels_last)
    torch.testing.assert_close(
        mod.ssim_scale(xl, yl, *_args(LOCAL), False)[0],
        ref.ssim_scale(xa, ya, *_args(LOCAL), False)[0],
        atol=1e-5,
        rtol=0,
    )
    xs, ys = xa[:, ::2, 1:, :], ya[:, ::2, 1:, :]
    torch.testing.assert_close(
        mod.ssim_scale(xs, ys, *_args(LOCAL), True)[2],
        ref.ssim_scale(xs, ys, *_args(LOCAL), True)[2],
        atol=1e-5,
        rtol=0,
    )


def test_cuda_extension_was_built_with_cuda():
    """On a GPU machine the extension must carry the CUDA kernels (a build without them
    would silently test nothing here)."""
    assert igd_fast.backends()["cuda"], igd_fast.backends()
