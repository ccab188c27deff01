"""Focused checks of the Triton SSIM kernels against the pure-PyTorch reference.

On a machine without a GPU they run under ``TRITON_INTERPRET=1`` (set by conftest), so
the shapes stay small; with a GPU they run on CUDA tensors.
"""

import os

import pytest
import torch

import igd_fast
from igd_fast import GLOBAL, LOCAL, MSSSIMConfig
from igd_fast.reference import ssim as ref

pytestmark = pytest.mark.skipif(not igd_fast.backends()["triton"], reason="triton backend not available")

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
DEV = "cpu" if INTERPRETED or not torch.cuda.is_available() else "cuda"
SMALL3 = MSSSIMConfig(win_size=11, weights=(0.3, 0.3, 0.4))  # min size 41


def _tk():
    from igd_fast.kernels import ssim as tk

    return tk


def _pair(shape, noise=0.4, dtype=torch.float32, sign=1.0):
    x = torch.randn(shape, dtype=torch.float64)
    y = sign * x + noise * torch.randn(shape, dtype=torch.float64)
    return x.to(DEV, dtype), y.to(DEV, dtype)


def _args(cfg):
    return cfg.win_size, cfg.sigma, cfg.c1, cfg.c2


def _close_grad(a, b):
    scale = float(b.abs().max())
    torch.testing.assert_close(a, b, atol=1e-4 * scale, rtol=1e-4)


@pytest.mark.parametrize(
    "cfg,shape",
    [
        (GLOBAL, (2, 3, 64, 64)),
        (LOCAL, (2, 3, 32, 32)),
        (GLOBAL, (1, 1, 37, 45)),
        (MSSSIMConfig(win_size=15, sigma=2.0), (1, 2, 15, 70)),
        (MSSSIMConfig(win_size=1), (1, 1, 5, 19)),
    ],
)
def test_forward_values_and_maps(cfg, shape):
    x, y = _pair(shape)
    got = _tk().ssim_scale(x, y, *_args(cfg), True)
    want = ref.ssim_scale(x, y, *_args(cfg), True)
    for g, w in zip(got, want):
        assert g.dtype == torch.float32 and g.shape == w.shape
        torch.testing.assert_close(g, w, atol=1e-5, rtol=0)
    no_maps = _tk().ssim_scale(x, y, *_args(cfg), False)
    assert no_maps[2].numel() == 0 and no_maps[3].numel() == 0
    torch.testing.assert_close(no_maps[0], want[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("cfg,shape", [(GLOBAL, (2, 2, 48, 40)), (LOCAL, (1, 3, 32, 33))])
@pytest.mark.parametrize("with_maps", [False, True])
def test_backward_matches_reference(cfg, shape, with_maps):
    x, y = _pair(shape)
    n, c, h, w = shape
    ho, wo = h - cfg.win_size + 1, w - cfg.win_size + 1
    g_s, g_cs = torch.randn(n, c, device=DEV), torch.randn(n, c, device=DEV)
    if with_maps:
        g_sm = torch.randn(n, c, ho, wo, device=DEV)
        g_cm = torch.randn(n, c, ho, wo, device=DEV)
    else:
        g_sm = g_cm = torch.empty(0, device=DEV)
    for need_gx in (True, False):
        gx, gy = _tk().ssim_scale_backward(x, y, *_args(cfg), g_s, g_cs, g_sm, g_cm, need_gx)
        rx, ry = ref.ssim_scale_backward(x, y, *_args(cfg), g_s, g_cs, g_sm, g_cm, need_gx)
        _close_grad(gy, ry)
        if need_gx:
            _close_grad(gx, rx)
        else:
            assert gx.numel() == 0


def test_combine_maps_matches_reference():
    x, y = _pair((2, 3, 48, 44))
    maps = []
    for j in range(SMALL3.scales):
        s, cs, sm, cm = ref.ssim_scale(x, y, *_args(SMALL3), True)
        maps.append(sm if j == SMALL3.scales - 1 else cm)
        x, y = ref.downsample(x), ref.downsample(y)
    maps[1] = maps[1] - 0.5  # negative values exercise relu
    got = _tk().combine_maps(maps, list(SMALL3.weights), 48, 44, SMALL3.win_size)
    want = ref.combine_maps(maps, list(SMALL3.weights), 48, 44, SMALL3.win_size)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("cfg,shape", [(SMALL3, (2, 3, 48, 41)), (LOCAL, (3, 1, 32, 32))])
def test_public_api_and_autograd(cfg, shape):
    x, y = _pair(shape)
    torch.testing.assert_close(
        igd_fast.ms_ssim(x, y, cfg, "none", backend="triton"), ref.ms_ssim(x, y, cfg, "none"), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        igd_fast.ms_ssim_map(x, y, cfg, backend="triton"), ref.ms_ssim_map(x, y, cfg), atol=1e-5, rtol=0
    )
    grads = []
    for backend in ("triton", "torch"):
        xr, yr = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
        loss = igd_fast.recon_loss(xr, yr, config=cfg, backend=backend)
        loss = loss + igd_fast.recon_error_map(xr, yr, config=cfg, backend=backend).square().mean()
        loss.backward()
        grads.append((xr.grad, yr.grad))
    _close_grad(grads[0][0], grads[1][0])
    _close_grad(grads[0][1], grads[1][1])


def test_identical_anticorrelated_and_layouts():
    x, y = _pair((2, 3, 40, 36))
    s, cs, _, _ = _tk().ssim_scale(x, x, *_args(GLOBAL), False)
    torch.testing.assert_close(s, torch.ones_like(s), atol=1e-6, rtol=0)
    torch.testing.assert_close(cs, torch.ones_like(cs), atol=1e-6, rtol=0)
    xa, ya = _pair((2, 3, 40, 36), noise=0.1, sign=-1.0)
    got = _tk().ssim_scale(xa, ya, *_args(GLOBAL), True)
    want = ref.ssim_scale(xa, ya, *_args(GLOBAL), True)
    assert float(want[1].max()) < 0  # anti-correlated: cs < 0
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=0)
    # channels_last and a non-contiguous slice give the same numbers
    xl, yl = x.to(memory_format=torch.channels_last), y.to(memory_format=torch.channels_last)
    torch.testing.assert_close(
        _tk().ssim_scale(xl, yl, *_args(LOCAL), True)[2],
        ref.ssim_scale(x, y, *_args(LOCAL), True)[2],
        atol=1e-5,
        rtol=0,
    )
    xs, ys = x[:, ::2, :, 1:], y[:, ::2, :, 1:]
    torch.testing.assert_close(
        _tk().ssim_scale(xs, ys, *_args(LOCAL), False)[0],
        ref.ssim_scale(xs, ys, *_args(LOCAL), False)[0],
        atol=1e-5,
        rtol=0,
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes(dtype):
    x, y = _pair((1, 2, 24, 20), dtype=dtype)
    got = _tk().ssim_scale(x, y, *_args(LOCAL), True)
    want = ref.ssim_scale(x, y, *_args(LOCAL), True)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    for g, w in zip(got, want):
        assert g.dtype == acc
        torch.testing.assert_close(g, w, atol=1e-5, rtol=0)
    g_s, g_cs = torch.randn(1, 2, device=DEV), torch.randn(1, 2, device=DEV)
    e = torch.empty(0, device=DEV)
    gx, gy = _tk().ssim_scale_backward(x, y, *_args(LOCAL), g_s, g_cs, e, e, True)
    rx, ry = ref.ssim_scale_backward(x, y, *_args(LOCAL), g_s, g_cs, e, e, True)
    assert gx.dtype == dtype and gy.dtype == dtype
    # low-precision gradients are rounded once, at the end
    tol = 1e-4 if dtype == torch.float64 else 1e-2
    torch.testing.assert_close(gy.double(), ry.double(), atol=tol * float(ry.double().abs().max()), rtol=tol)
    torch.testing.assert_close(gx.double(), rx.double(), atol=tol * float(rx.double().abs().max()), rtol=tol)


@pytest.mark.parametrize("cfg,shape", [(LOCAL, (2, 2, 20, 37)), (MSSSIMConfig(win_size=5, sigma=1.0), (1, 1, 9, 40))])
def test_shifted_load_path(monkeypatch, cfg, shape):
    """The GPU filter path (K×K shifted loads) on tiny shapes; the interpreter's default
    is the banded-product path, exercised by every other test here."""
    tk = _tk()
    monkeypatch.setattr(tk, "USE_DOT", False)
    x, y = _pair(shape)
    got = tk.ssim_scale(x, y, *_args(cfg), True)
    want = ref.ssim_scale(x, y, *_args(cfg), True)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=0)
    n, c = shape[:2]
    g_s, g_cs = torch.randn(n, c, device=DEV), torch.randn(n, c, device=DEV)
    g_sm = torch.randn_like(want[2])
    e = torch.empty(0, device=DEV)
    for need_gx in (True, False):
        gx, gy = tk.ssim_scale_backward(x, y, *_args(cfg), g_s, g_cs, g_sm, e, need_gx)
        rx, ry = ref.ssim_scale_backward(x, y, *_args(cfg), g_s, g_cs, g_sm, e, need_gx)
        _close_grad(gy, ry)
        if need_gx:
            _close_grad(gx, rx)
