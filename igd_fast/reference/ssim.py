"""Reference SSIM / MS-SSIM in plain PyTorch (the ``torch`` backend).

Conventions, shared by every backend:
- separable Gaussian window (:func:`igd_fast.config.gaussian_window`), *valid* filtering, so a scale of
  H×W gives SSIM and cs maps of (H-k+1)×(W-k+1);
- statistics in float32 (float64 stays float64);
- between scales a 2×2 average pool that pads odd sizes by one (as pytorch_msssim);
- MS-SSIM = prod_j relu(cs_j)^w_j for j < M, times relu(ssim_M)^w_M, per image and
  channel, then averaged over channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import config
from ..config import MSSSIMConfig
from .resize import bilinear


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def gaussian_window(win_size: int, sigma: float, device=None, dtype=torch.float32) -> torch.Tensor:
    """The taps of :func:`igd_fast.config.gaussian_window` (float64), cast to ``dtype``."""
    return torch.tensor(config.gaussian_window(win_size, sigma), dtype=torch.float64).to(device=device, dtype=dtype)


def gaussian_filter(t: torch.Tensor, win: torch.Tensor) -> torch.Tensor:
    """Valid separable filtering of every channel of N×C×H×W ``t`` by the 1-D ``win``."""
    c = t.shape[1]
    k = win.numel()
    out = F.conv2d(t, win.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)
    return F.conv2d(out, win.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)


def ssim_maps(
    x: torch.Tensor, y: torch.Tensor, win_size: int, sigma: float, c1: float, c2: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """SSIM and contrast-structure maps of one scale (valid size)."""
    dt = compute_dtype(x.dtype)
    x = x.to(dt)
    y = y.to(dt)
    win = gaussian_window(win_size, sigma, x.device, dt)
    mu_x = gaussian_filter(x, win)
    mu_y = gaussian_filter(y, win)
    sxx = gaussian_filter(x * x, win) - mu_x * mu_x
    syy = gaussian_filter(y * y, win) - mu_y * mu_y
    sxy = gaussian_filter(x * y, win) - mu_x * mu_y
    cs = (2.0 * sxy + c2) / (sxx + syy + c2)
    lum = (2.0 * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1)
    return lum * cs, cs


def ssim_scale(x, y, win_size, sigma, c1, c2, want_maps):
    """Backend entry point: (ssim_mean, cs_mean, ssim_map | empty, cs_map | empty)."""
    s, cs = ssim_maps(x, y, win_size, sigma, c1, c2)
    s_mean = s.mean(dim=(-2, -1))
    cs_mean = cs.mean(dim=(-2, -1))
    if want_maps:
        return s_mean, cs_mean, s, cs
    return s_mean, cs_mean, s.new_empty(0), s.new_empty(0)


def gaussian_filter_t(t: torch.Tensor, win: torch.Tensor) -> torch.Tensor:
    """Adjoint of :func:`gaussian_filter`: valid-size maps back to the input size."""
    c = t.shape[1]
    k = win.numel()
    out = F.conv_transpose2d(t, win.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    return F.conv_transpose2d(out, win.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)


def ssim_scale_backward(x, y, win_size, sigma, c1, c2, g_s_mean, g_cs_mean, g_s_map, g_cs_map, need_gx):
    """Backend entry point: analytic gradients of one scale (the math every kernel does).

    With L = A1/B1 (luminance) and CS = A2/B2, the gradient of the maps with respect
    to the filtered moments (mu_x, mu_y, E[x^2], E[y^2], E[xy]) is formed per output
    pixel, then the adjoint filter takes it back to pixels:
    d/dy = W^T G_mu_y + 2 y W^T G_yy + x W^T G_xy (and symmetrically for x).
    """
    dt = compute_dtype(x.dtype)
    xf, yf = x.to(dt), y.to(dt)
    win = gaussian_window(win_size, sigma, x.device, dt)
    mu_x, mu_y = gaussian_filter(xf, win), gaussian_filter(yf, win)
    sxx = gaussian_filter(xf * xf, win) - mu_x * mu_x
    syy = gaussian_filter(yf * yf, win) - mu_y * mu_y
    sxy = gaussian_filter(xf * yf, win) - mu_x * mu_y
    a1, b1 = 2.0 * mu_x * mu_y + c1, mu_x * mu_x + mu_y * mu_y + c1
    a2, b2 = 2.0 * sxy + c2, sxx + syy + c2
    lum, cs = a1 / b1, a2 / b2
    npix = cs.shape[-1] * cs.shape[-2]
    g_s = (g_s_mean.to(dt) / npix)[..., None, None].expand_as(cs)
    g_c = (g_cs_mean.to(dt) / npix)[..., None, None].expand_as(cs)
    if g_s_map.numel():
        g_s = g_s + g_s_map.to(dt)
    if g_cs_map.numel():
        g_c = g_c + g_cs_map.to(dt)
    g_lum = g_s * cs
    g_cs = g_s * lum + g_c
    g_var = -g_cs * cs / b2  # d/d E[y^2] (and d/d E[x^2])
    g_cov = 2.0 * g_cs / b2  # d/d E[xy]
    g_mu_y = 2.0 * g_lum * (mu_x - lum * mu_y) / b1 - 2.0 * g_var * mu_y - g_cov * mu_x
    gy = gaussian_filter_t(g_mu_y, win) + 2.0 * yf * gaussian_filter_t(g_var, win)
    cov_t = gaussian_filter_t(g_cov, win)
    gy = gy + xf * cov_t
    if need_gx:
        g_mu_x = 2.0 * g_lum * (mu_y - lum * mu_x) / b1 - 2.0 * g_var * mu_x - g_cov * mu_y
        gx = gaussian_filter_t(g_mu_x, win) + 2.0 * xf * gaussian_filter_t(g_var, win) + yf * cov_t
        gx = gx.to(x.dtype)
    else:
        gx = x.new_empty(0)
    return gx, gy.to(y.dtype)


def downsample(t: torch.Tensor) -> torch.Tensor:
    """2×2 average pool; odd sizes padded by one (zeros counted), as pytorch_msssim."""
    pad = [s % 2 for s in t.shape[-2:]]
    return F.avg_pool2d(t, kernel_size=2, padding=pad)


def downsample_backward(grad: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Adjoint of :func:`downsample` for an input of h×w: each pixel lies in one window."""
    up = grad.repeat_interleave(2, -2).repeat_interleave(2, -1) / 4
    return up[..., h % 2 : h % 2 + h, w % 2 : w % 2 + w]


def safe_pow(v: torch.Tensor, w: float) -> torch.Tensor:
    """relu(v) ** w with a zero (not NaN) gradient where v <= 0."""
    pos = v > 0
    base = torch.where(pos, v, torch.ones_like(v))
    return torch.where(pos, base**w, torch.zeros_like(v))


def upsample_scale_map(m: torch.Tensor, win_size: int, out_h: int, out_w: int) -> torch.Tensor:
    """Bring a valid-size scale map back to the input resolution.

    The map is first padded by the window radius (replicate), which gives it the size
    of its scale's input; then bilinearly resized (align_corners=False) to out_h×out_w.
    At scale 0 this is only the padding.
    """
    r = win_size // 2
    if r:
        m = F.pad(m, (r, r, r, r), mode="replicate")
    if m.shape[-2:] != (out_h, out_w):
        m = bilinear(m, (out_h, out_w))
    return m


def combine_maps(maps, weights, out_h, out_w, win_size):
    """Backend entry point: per-pixel MS-SSIM = prod_j relu(U_j(m_j)) ** w_j.

    ``maps`` are the cs maps of scales 0..M-2 and the SSIM map of scale M-1. Relu is
    applied after upsampling (bilinear keeps non-negative values non-negative, and
    the order then does not matter for valid maps).
    """
    ups = [upsample_scale_map(m, win_size, out_h, out_w) for m in maps]
    if not (torch.is_grad_enabled() and any(u.requires_grad for u in ups)):
        # exp(sum_j w_j log u_j), as the kernels: one Exp and vectorised Logs where a runtime's
        # Pow with a float exponent runs per element (an exported graph's largest cost). A u_j <= 0
        # or NaN makes the sum -inf or NaN, and relu's 0 follows: one Where, not one per scale
        t = sum(w * torch.log(u) for u, w in zip(ups, weights))
        return torch.exp(torch.where(torch.isnan(t), float("-inf"), t))
    out = None
    for u, w in zip(ups, weights):
        term = safe_pow(u, w)
        out = term if out is None else out * term
    return out


def ms_ssim_fused(x, y, win_size, sigma, c1, c2, weights, want_map):
    """Backend entry point of the fused inference op: (ssim means N×C×S, cs means N×C×S,
    channel-mean map N×1×H×W, or empty(0) without want_map) = every scale of
    ssim_scale, the pools between them, combine_maps and the mean over channels."""
    h, w = x.shape[-2:]
    s_means, c_means, maps = [], [], []
    for j in range(len(weights)):
        s, cs, s_map, cs_map = ssim_scale(x, y, win_size, sigma, c1, c2, want_map)
        last = j == len(weights) - 1
        s_means.append(s)
        c_means.append(cs)
        maps.append(s_map if last else cs_map)
        if not last:
            x, y = downsample(x), downsample(y)
    means = torch.stack(s_means, -1), torch.stack(c_means, -1)
    if not want_map:
        return *means, x.new_empty(0, dtype=means[0].dtype)
    return *means, combine_maps(maps, weights, h, w, win_size).mean(1, keepdim=True)


def ms_ssim_per_channel(x: torch.Tensor, y: torch.Tensor, config: MSSSIMConfig) -> torch.Tensor:
    """N×C MS-SSIM values (no channel average)."""
    vals = []
    for j, w in enumerate(config.weights):
        s, cs = ssim_maps(x, y, config.win_size, config.sigma, config.c1, config.c2)
        last = j == config.scales - 1
        vals.append(safe_pow((s if last else cs).mean(dim=(-2, -1)), w))
        if not last:
            x, y = downsample(x), downsample(y)
    return torch.stack(vals, 0).prod(0)


def reduce(v: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return v.mean()
    if reduction == "sum":
        return v.sum()
    if reduction == "none":
        return v
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def ms_ssim(x, y, config: MSSSIMConfig, reduction: str = "mean") -> torch.Tensor:
    return reduce(ms_ssim_per_channel(x, y, config).mean(1), reduction)


def ms_ssim_map(x, y, config: MSSSIMConfig) -> torch.Tensor:
    """N×1×H×W per-pixel MS-SSIM (channel mean of the per-channel maps)."""
    c = config
    return ms_ssim_fused(x, y, c.win_size, c.sigma, c.c1, c.c2, list(c.weights), True)[2]


def abs_error(x, x_hat) -> torch.Tensor:
    dt = compute_dtype(x.dtype)
    return (x.to(dt) - x_hat.to(dt)).abs()


def recon_loss(x, x_hat, config: MSSSIMConfig, rho: float = 0.15, reduction: str = "mean"):
    """rho * MAE / L + (1 - rho) * (1 - MS-SSIM), per image then reduced."""
    mae = abs_error(x, x_hat).mean(dim=(1, 2, 3))
    per_image = rho * mae / config.data_range + (1 - rho) * (1 - ms_ssim(x, x_hat, config, "none"))
    return reduce(per_image, reduction)


def recon_error_map(x, x_hat, config: MSSSIMConfig, rho: float = 0.15) -> torch.Tensor:
    """N×1×H×W per-pixel l_r: rho * mean_c |x - x_hat| / L + (1 - rho) * (1 - MS-SSIM map)."""
    mae = abs_error(x, x_hat).mean(1, keepdim=True)
    return rho * mae / config.data_range + (1 - rho) * (1 - ms_ssim_map(x, x_hat, config))
