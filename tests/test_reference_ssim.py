"""The pure-PyTorch reference against independent peers, gradcheck and input errors."""

import importlib

import numpy as np
import pytest
import pytorch_msssim
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.metrics import structural_similarity

import igd_fast
from igd_fast import GLOBAL, LOCAL, MSSSIMConfig
from igd_fast.reference import ssim as ref

L = igd_fast.DATA_RANGE
# the package re-exports a function named ssim over its submodule
_pm = importlib.import_module("pytorch_msssim.ssim")
_tm = importlib.import_module("torchmetrics.functional.image.ssim")


def _pair(shape, noise=0.4, dtype=torch.float32):
    x = torch.randn(shape, dtype=dtype)
    return x, x + noise * torch.randn(shape, dtype=dtype)


@pytest.mark.parametrize("shape", [(2, 3, 256, 256), (1, 1, 161, 170), (3, 3, 193, 201)])
def test_ms_ssim_matches_pytorch_msssim(shape):
    x, y = _pair(shape)
    ours = ref.ms_ssim(x, y, GLOBAL, "none")
    peer = pytorch_msssim.ms_ssim(x, y, data_range=L, size_average=False, weights=list(GLOBAL.weights))
    torch.testing.assert_close(ours, peer, atol=1e-5, rtol=0)


def test_public_api_torch_backend_matches_pytorch_msssim():
    x, y = _pair((2, 3, 192, 192))
    ours = igd_fast.ms_ssim(x, y, reduction="none", backend="torch")
    peer = pytorch_msssim.ms_ssim(x, y, data_range=L, size_average=False, weights=list(GLOBAL.weights))
    torch.testing.assert_close(ours, peer, atol=1e-5, rtol=0)
    torch.testing.assert_close(igd_fast.ms_ssim(x, y, backend="torch"), peer.mean(), atol=1e-5, rtol=0)


def test_per_level_values_match_pytorch_msssim():
    """Each scale's SSIM and cs (per channel) against pytorch_msssim's own _ssim."""
    x, y = _pair((2, 3, 200, 180))
    win = _pm._fspecial_gauss_1d(11, 1.5).repeat(3, 1, 1, 1)
    for _ in range(GLOBAL.scales):
        s_peer, cs_peer = _pm._ssim(x, y, data_range=L, win=win, K=(0.01, 0.03))
        s, cs, _, _ = ref.ssim_scale(x, y, 11, 1.5, GLOBAL.c1, GLOBAL.c2, False)
        torch.testing.assert_close(s, s_peer, atol=1e-5, rtol=0)
        torch.testing.assert_close(cs, cs_peer, atol=1e-5, rtol=0)
        x, y = ref.downsample(x), ref.downsample(y)


def test_single_scale_ssim_matches_pytorch_msssim_ssim():
    x, y = _pair((2, 3, 64, 48))
    s, _, _, _ = ref.ssim_scale(x, y, 11, 1.5, GLOBAL.c1, GLOBAL.c2, False)
    peer = pytorch_msssim.ssim(x, y, data_range=L, size_average=False)
    torch.testing.assert_close(s.mean(1), peer, atol=1e-5, rtol=0)


def test_scale_maps_match_torchmetrics():
    """torchmetrics filters a reflect-padded image and averages SSIM over the padded
    border too, so its MS-SSIM value differs; its cs value and its SSIM map cropped to
    the valid region are the settings where we agree."""
    x, y = _pair((3, 1, 96, 80))
    kw = dict(gaussian_kernel=True, sigma=1.5, kernel_size=11, data_range=L, k1=0.01, k2=0.03)
    _, cs_peer = _tm._ssim_update(y, x, return_contrast_sensitivity=True, **kw)
    _, full = _tm._ssim_update(y, x, return_full_image=True, **kw)
    _, cs, s_map, _ = ref.ssim_scale(x, y, 11, 1.5, GLOBAL.c1, GLOBAL.c2, True)
    torch.testing.assert_close(cs[:, 0], cs_peer, atol=1e-5, rtol=0)
    torch.testing.assert_close(s_map, full[..., 5:-5, 5:-5], atol=1e-5, rtol=0)


@pytest.mark.parametrize("hw", [(64, 64), (37, 50)])
def test_ssim_map_matches_scikit_image(hw):
    rng = np.random.default_rng(0)
    a = rng.normal(size=hw)
    b = a + 0.5 * rng.normal(size=hw)
    mssim, full = structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=L, full=True
    )
    x = torch.from_numpy(a)[None, None]
    y = torch.from_numpy(b)[None, None]
    s_mean, _, s_map, _ = ref.ssim_scale(x, y, 11, 1.5, GLOBAL.c1, GLOBAL.c2, True)
    np.testing.assert_allclose(s_map[0, 0].numpy(), full[5:-5, 5:-5], atol=1e-5)
    assert abs(float(s_mean) - mssim) < 1e-5


def test_identical_inputs_give_one_and_zero_loss():
    x = torch.randn(2, 3, 176, 176)
    assert torch.allclose(igd_fast.ms_ssim(x, x, backend="torch"), torch.tensor(1.0), atol=1e-6)
    assert float(igd_fast.recon_loss(x, x, backend="torch")) == pytest.approx(0.0, abs=1e-6)
    m = igd_fast.ms_ssim_map(x, x, backend="torch")
    assert m.shape == (2, 1, 176, 176)
    torch.testing.assert_close(m, torch.ones_like(m), atol=1e-5, rtol=0)


def test_map_is_consistent_with_value_for_constant_scales():
    """A map's combination of constant per-scale maps equals the MS-SSIM formula."""
    maps = [torch.full((1, 1, 10 - 2 * j, 12 - 2 * j), v) for j, v in enumerate([0.9, 0.8, 0.7])]
    out = ref.combine_maps(maps, [0.2, 0.3, 0.5], 20, 24, 3)
    expect = 0.9**0.2 * 0.8**0.3 * 0.7**0.5
    torch.testing.assert_close(out, torch.full_like(out, expect))


def test_recon_loss_formula():
    x, y = _pair((2, 3, 170, 180))
    rho = 0.3
    per = igd_fast.recon_loss(x, y, rho=rho, reduction="none", backend="torch")
    ms = pytorch_msssim.ms_ssim(x, y, data_range=L, size_average=False, weights=list(GLOBAL.weights))
    mae = (x - y).abs().mean(dim=(1, 2, 3))
    torch.testing.assert_close(per, rho * mae / L + (1 - rho) * (1 - ms), atol=1e-5, rtol=0)


def test_local_config_on_patches():
    x, y = _pair((5, 3, 32, 32))
    v = igd_fast.ms_ssim(x, y, config=LOCAL, reduction="none", backend="torch")
    assert v.shape == (5,) and bool(((v > 0) & (v < 1)).all())
    m = igd_fast.recon_error_map(x, y, config=LOCAL, backend="torch")
    assert m.shape == (5, 1, 32, 32) and bool((m >= 0).all())


SMALL = MSSSIMConfig(win_size=3, sigma=1.5, weights=(0.3, 0.7))


@pytest.mark.parametrize("fn", ["ms_ssim", "recon_loss", "ms_ssim_map"])
def test_gradcheck_float64(fn):
    x = torch.randn(1, 2, 9, 8, dtype=torch.float64)
    y = (x + 0.5 * torch.randn_like(x)).requires_grad_(True)
    xg = x.clone().requires_grad_(True)

    def f(a, b):
        if fn == "ms_ssim_map":
            return igd_fast.ms_ssim_map(a, b, config=SMALL, backend="torch")
        return getattr(igd_fast, fn)(a, b, config=SMALL, reduction="none", backend="torch")

    assert torch.autograd.gradcheck(f, (xg, y), eps=1e-6, atol=1e-6)


@settings(max_examples=15, deadline=None)
@given(
    h=st.integers(5, 20), w=st.integers(5, 20), k=st.sampled_from([1, 3, 5]),
    c=st.sampled_from([1, 3]), want_gx=st.booleans(),
)
def test_analytic_backward_equals_autograd(h, w, k, c, want_gx):
    x = torch.randn(2, c, h, w, dtype=torch.float64)
    y = x + torch.randn_like(x)
    if k > min(h, w):
        return
    g_s, g_c = torch.randn(2, c, dtype=torch.float64), torch.randn(2, c, dtype=torch.float64)
    ho, wo = h - k + 1, w - k + 1
    g_sm, g_cm = torch.randn(2, c, ho, wo, dtype=torch.float64), torch.randn(2, c, ho, wo, dtype=torch.float64)
    gx, gy = ref.ssim_scale_backward(x, y, k, 1.5, 0.01, 0.03, g_s, g_c, g_sm, g_cm, want_gx)
    xr, yr = x.clone().requires_grad_(), y.clone().requires_grad_()
    s, cs = ref.ssim_maps(xr, yr, k, 1.5, 0.01, 0.03)
    obj = (s.mean((-2, -1)) * g_s).sum() + (cs.mean((-2, -1)) * g_c).sum() + (s * g_sm).sum() + (cs * g_cm).sum()
    ax, ay = torch.autograd.grad(obj, (xr, yr))
    torch.testing.assert_close(gy, ay)
    if want_gx:
        torch.testing.assert_close(gx, ax)
    else:
        assert gx.numel() == 0


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "x, y, match",
    [
        (torch.randn(3, 200, 200), torch.randn(3, 200, 200), "4-D"),
        (torch.randn(1, 3, 200, 200), torch.randn(1, 3, 200, 199), "same shape"),
        (torch.zeros(1, 3, 200, 200, dtype=torch.int64), torch.zeros(1, 3, 200, 200, dtype=torch.int64), "floating"),
        (torch.randn(1, 3, 160, 300), torch.randn(1, 3, 160, 300), "at least 161"),
        (torch.randn(1, 3, 200, 200), torch.randn(1, 3, 200, 200, dtype=torch.float64), "dtype"),
        (torch.randn(0, 3, 200, 200), torch.randn(0, 3, 200, 200), "empty"),
    ],
)
def test_bad_input_raises_clear_error(x, y, match):
    with pytest.raises(ValueError, match=match):
        igd_fast.ms_ssim(x, y)


def test_too_small_for_local_config_names_minimum():
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(ValueError, match=r"4 scales with a 3×3 window.*at least 17"):
        igd_fast.recon_loss(x, x, config=LOCAL)


def test_nan_check_flag(monkeypatch):
    from igd_fast import _validate

    x = torch.randn(1, 1, 170, 170)
    y = x.clone()
    y[0, 0, 3, 3] = float("nan")
    monkeypatch.setattr(_validate, "_CHECK_FINITE_DEFAULT", True)
    with pytest.raises(ValueError, match="y contains NaN or inf"):
        igd_fast.ms_ssim(x, y)


def test_bad_config_and_backend():
    with pytest.raises(ValueError, match="odd"):
        MSSSIMConfig(win_size=4)
    x = torch.randn(1, 1, 170, 170)
    with pytest.raises(ValueError, match="unknown backend"):
        igd_fast.ms_ssim(x, x, backend="metal")
    with pytest.raises(ValueError, match="reduction"):
        igd_fast.ms_ssim(x, x, reduction="max", backend="torch")


def test_backends_lists_this_build():
    b = igd_fast.backends()
    assert set(b) == {"torch", "cpu", "cuda", "triton"}
    assert b["torch"] is True
    assert b["cuda"] is torch.cuda.is_available() and b["cuda"] == igd_fast._backends.extension_has_cuda()


def test_env_override(monkeypatch):
    monkeypatch.setenv("IGD_FAST_BACKEND", "torch")
    assert igd_fast._backends.resolve(torch.device("cpu")) == "torch"
    monkeypatch.setenv("IGD_FAST_BACKEND", "cuda")
    if not igd_fast.backends()["cuda"]:
        with pytest.raises(ValueError, match="not available"):
            igd_fast._backends.resolve(torch.device("cpu"))
