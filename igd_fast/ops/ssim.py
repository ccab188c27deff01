"""MS-SSIM ops: ``igd_fast::ssim_scale`` (+ backward) and ``igd_fast::combine_maps``.

One op per kernel, registered with ``torch.library`` (fake impls for
``torch.compile``, autograd through registered backwards). The ``backend`` argument
names the implementation; :mod:`igd_fast._backends` resolves it before the call and
:data:`igd_fast.ops.backends.SSIM` maps it to the function that runs.
The multi-scale glue (pooling, relu/pow/product over scales) is ordinary PyTorch so
autograd composes it with the kernels.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _backends
from .._validate import check_image_pair
from ..config import GLOBAL, MSSSIMConfig
from ..reference import ssim as ref
from .backends import ssim_kernels


@torch.library.custom_op("igd_fast::ssim_scale", mutates_args=())
def ssim_scale(
    x: Tensor, y: Tensor, win_size: int, sigma: float, c1: float, c2: float, want_maps: bool, backend: str
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One scale: (ssim_mean N×C, cs_mean N×C, ssim_map | empty, cs_map | empty), float32."""
    return tuple(ssim_kernels(backend).ssim_scale(x, y, win_size, sigma, c1, c2, want_maps))


@ssim_scale.register_fake
def _(x, y, win_size, sigma, c1, c2, want_maps, backend):
    n, c, h, w = x.shape
    dt = ref.compute_dtype(x.dtype)
    mean = x.new_empty((n, c), dtype=dt)
    if want_maps:
        m = x.new_empty((n, c, h - win_size + 1, w - win_size + 1), dtype=dt)
        return mean, mean.clone(), m, m.clone()
    return mean, mean.clone(), x.new_empty(0, dtype=dt), x.new_empty(0, dtype=dt)


@torch.library.custom_op("igd_fast::ssim_scale_backward", mutates_args=())
def ssim_scale_backward(
    x: Tensor,
    y: Tensor,
    win_size: int,
    sigma: float,
    c1: float,
    c2: float,
    g_ssim_mean: Tensor,
    g_cs_mean: Tensor,
    g_ssim_map: Tensor,
    g_cs_map: Tensor,
    need_gx: bool,
    backend: str,
) -> tuple[Tensor, Tensor]:
    """Gradients (gx | empty, gy) of one scale; map grads may be empty (= zero)."""
    return tuple(
        ssim_kernels(backend).ssim_scale_backward(
            x, y, win_size, sigma, c1, c2, g_ssim_mean, g_cs_mean, g_ssim_map, g_cs_map, need_gx
        )
    )


@ssim_scale_backward.register_fake
def _(x, y, win_size, sigma, c1, c2, g_ssim_mean, g_cs_mean, g_ssim_map, g_cs_map, need_gx, backend):
    gx = torch.empty_like(x) if need_gx else x.new_empty(0)
    return gx, torch.empty_like(y)


def _ssim_scale_setup(ctx, inputs, output):
    x, y, win_size, sigma, c1, c2, want_maps, backend = inputs
    ctx.save_for_backward(x, y)
    ctx.params = (win_size, sigma, c1, c2, backend)


def _ssim_scale_grad(ctx, g_s_mean, g_cs_mean, g_s_map, g_cs_map):
    x, y = ctx.saved_tensors
    win_size, sigma, c1, c2, backend = ctx.params
    n, c = x.shape[:2]
    zeros = x.new_zeros((n, c), dtype=ref.compute_dtype(x.dtype))
    g_s_mean = zeros if g_s_mean is None else g_s_mean.contiguous()
    g_cs_mean = zeros if g_cs_mean is None else g_cs_mean.contiguous()
    empty = zeros.new_empty(0)
    g_s_map = empty if g_s_map is None or g_s_map.numel() == 0 else g_s_map.contiguous()
    g_cs_map = empty if g_cs_map is None or g_cs_map.numel() == 0 else g_cs_map.contiguous()
    need_gx = ctx.needs_input_grad[0]
    gx, gy = ssim_scale_backward(
        x, y, win_size, sigma, c1, c2, g_s_mean, g_cs_mean, g_s_map, g_cs_map, need_gx, backend
    )
    return (gx if need_gx else None), gy, None, None, None, None, None, None


ssim_scale.register_autograd(_ssim_scale_grad, setup_context=_ssim_scale_setup)


@torch.library.custom_op("igd_fast::combine_maps", mutates_args=())
def combine_maps(
    maps: list[Tensor], weights: list[float], out_h: int, out_w: int, win_size: int, backend: str
) -> Tensor:
    """Per-pixel MS-SSIM from the per-scale maps, N×C×out_h×out_w (see reference)."""
    return ssim_kernels(backend).combine_maps(maps, weights, out_h, out_w, win_size)


@combine_maps.register_fake
def _(maps, weights, out_h, out_w, win_size, backend):
    n, c = maps[0].shape[:2]
    return maps[0].new_empty((n, c, out_h, out_w))


def _combine_setup(ctx, inputs, output):
    maps, weights, out_h, out_w, win_size, backend = inputs
    ctx.save_for_backward(*maps)
    ctx.params = (list(weights), out_h, out_w, win_size)


def _combine_grad(ctx, grad):
    # The product's backward is cheap elementwise work: autograd of the reference.
    maps = [m.detach().requires_grad_(True) for m in ctx.saved_tensors]
    with torch.enable_grad():
        out = ref.combine_maps(maps, *ctx.params)
        grads = torch.autograd.grad(out, maps, grad)
    return list(grads), None, None, None, None, None


combine_maps.register_autograd(_combine_grad, setup_context=_combine_setup)


@torch.library.custom_op("igd_fast::downsample", mutates_args=())
def downsample(x: Tensor, backend: str) -> Tensor:
    """2×2 average pool between scales (odd sizes padded, as pytorch_msssim)."""
    return ssim_kernels(backend).downsample(x)


@downsample.register_fake
def _(x, backend):
    n, c, h, w = x.shape
    return x.new_empty((n, c, (h + 1) // 2, (w + 1) // 2))


@torch.library.custom_op("igd_fast::downsample_backward", mutates_args=())
def downsample_backward(grad: Tensor, h: int, w: int, backend: str) -> Tensor:
    """Adjoint of :func:`downsample` for an h×w input."""
    return ssim_kernels(backend).downsample_backward(grad.contiguous(), h, w)


@downsample_backward.register_fake
def _(grad, h, w, backend):
    return grad.new_empty((*grad.shape[:-2], h, w))


def _downsample_setup(ctx, inputs, output):
    x, backend = inputs
    ctx.hw = tuple(x.shape[-2:])
    ctx.backend = backend


def _downsample_grad(ctx, g):
    return downsample_backward(g, *ctx.hw, ctx.backend), None


downsample.register_autograd(_downsample_grad, setup_context=_downsample_setup)


@torch.library.custom_op("igd_fast::ms_ssim_fused", mutates_args=())
def ms_ssim_fused(
    x: Tensor, y: Tensor, win_size: int, sigma: float, c1: float, c2: float, weights: list[float], want_map: bool,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """Inference in one op: (ssim means N×C×S, cs means N×C×S, channel-mean map
    N×1×H×W or empty(0)). No autograd: used only when no gradient is needed."""
    fused = ssim_kernels(backend).ms_ssim_fused
    if fused is None:
        raise RuntimeError(f"backend {backend!r} has no ms_ssim_fused (see igd_fast.ops.backends.SSIM)")
    return tuple(fused(x, y, win_size, sigma, c1, c2, weights, want_map))


@ms_ssim_fused.register_fake
def _(x, y, win_size, sigma, c1, c2, weights, want_map, backend):
    n, c, h, w = x.shape
    dt = ref.compute_dtype(x.dtype)
    means = x.new_empty((n, c, len(weights)), dtype=dt)
    ms_map = x.new_empty((n, 1, h, w) if want_map else (0,), dtype=dt)
    return means, means.clone(), ms_map


def _fused(x: Tensor, backend: str, needs_grad: bool) -> bool:
    """Whether the one-op inference path applies: no gradients, float32/64 CPU images,
    and a backend that lists it (the C++ kernel; the ``torch`` backend's
    implementation is the reference composition of the per-scale ops)."""
    return (
        x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)  # fp16/bf16 pool in their own precision
        and not needs_grad
        and ssim_kernels(backend).ms_ssim_fused is not None
    )


# ---------------------------------------------------------------- public functions


def _scales(x: Tensor, y: Tensor, config: MSSSIMConfig, want_maps: bool, backend: str):
    """Run every scale: a list of (ssim_mean, cs_mean, ssim_map, cs_map) per scale."""
    out = []
    for j in range(config.scales):
        out.append(
            ssim_scale(x, y, config.win_size, config.sigma, config.c1, config.c2, want_maps, backend)
        )
        if j < config.scales - 1:
            x, y = downsample(x, backend), downsample(y, backend)
    return out


def _values_and_map(x: Tensor, y: Tensor, config: MSSSIMConfig, want_map: bool, backend: str):
    """N×C MS-SSIM values and (if ``want_map``) the N×1×H×W per-pixel map, from ONE pass
    over the scales: the per-scale kernels give the pooled values and the maps together.
    Inputs already checked, backend already resolved."""
    last = config.scales - 1
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or y.requires_grad)
    ms_map = None
    if _fused(x, backend, needs_grad):
        s_means, c_means, fused_map = ms_ssim_fused(
            x, y, config.win_size, config.sigma, config.c1, config.c2, list(config.weights), want_map, backend
        )
        s_means, c_means = s_means.unbind(-1), c_means.unbind(-1)
        if want_map:
            ms_map = fused_map
    else:
        scales = _scales(x, y, config, want_map, backend)
        s_means, c_means = [s[0] for s in scales], [s[1] for s in scales]
        if want_map:
            maps = [s[2] if j == last else s[3] for j, s in enumerate(scales)]
            h, w = x.shape[-2:]
            ms_map = combine_maps(maps, list(config.weights), h, w, config.win_size, backend).mean(1, keepdim=True)
    vals = [ref.safe_pow(s_means[j] if j == last else c_means[j], w) for j, w in enumerate(config.weights)]
    return torch.stack(vals, 0).prod(0), ms_map


def ms_ssim_with_map(
    x: Tensor,
    y: Tensor,
    config: MSSSIMConfig = GLOBAL,
    want_map: bool = True,
    backend: str | None = None,
    check_finite: bool | None = None,
) -> tuple[Tensor, Tensor | None]:
    """N×C MS-SSIM values and (if ``want_map``) the N×1×H×W per-pixel map, from one pass.
    ``check_finite``: see :func:`ms_ssim`."""
    check_image_pair(x, y, config, check_finite=check_finite)
    return _values_and_map(x, y, config, want_map, _backends.resolve(x.device, backend))


def ms_ssim_per_channel(
    x: Tensor, y: Tensor, config: MSSSIMConfig = GLOBAL, backend: str | None = None, check_finite: bool | None = None
) -> Tensor:
    """N×C MS-SSIM values."""
    return ms_ssim_with_map(x, y, config, False, backend, check_finite)[0]


def ms_ssim(
    x: Tensor,
    y: Tensor,
    config: MSSSIMConfig = GLOBAL,
    reduction: str = "mean",
    backend: str | None = None,
    check_finite: bool | None = None,
) -> Tensor:
    """MS-SSIM of two N×C×H×W batches, averaged over channels.

    ``reduction``: ``"mean"`` (scalar), ``"sum"`` or ``"none"`` (one value per image).

    NaN / inf pixels: the result is undefined, and may well be a finite number (every
    backend, the reference included, clamps negative SSIM terms with a ReLU, which turns
    NaN into 0). Inputs are not scanned by default (a full pass over both images); pass
    ``check_finite=True``, or set ``IGD_FAST_CHECK_FINITE=1`` for every call, to get a
    ValueError instead. The package's own pipelines never hand it non-finite pixels:
    decoded images are finite, non-finite weights are refused on load and a non-finite
    score is an error for its image.

    >>> import torch, igd_fast
    >>> x = torch.randn(2, 3, 256, 256)
    >>> float(igd_fast.ms_ssim(x, x))
    1.0
    """
    return ref.reduce(ms_ssim_per_channel(x, y, config, backend, check_finite).mean(1), reduction)


def ms_ssim_map(
    x: Tensor, y: Tensor, config: MSSSIMConfig = GLOBAL, backend: str | None = None, check_finite: bool | None = None
) -> Tensor:
    """N×1×H×W per-pixel MS-SSIM: per-scale maps brought back to H×W and combined
    as prod_j relu(map_j) ** w_j (see :func:`igd_fast.reference.ssim.combine_maps`);
    NaN / inf pixels and ``check_finite`` as in :func:`ms_ssim`."""
    return ms_ssim_with_map(x, y, config, True, backend, check_finite)[1]


def recon_terms(
    x: Tensor,
    x_hat: Tensor,
    rho: float = 0.15,
    config: MSSSIMConfig = GLOBAL,
    want_map: bool = True,
    backend: str | None = None,
    what: str = "x and y",
) -> tuple[Tensor, Tensor | None]:
    """Per-image l_r = rho * MAE / L + (1 - rho) * (1 - MS-SSIM) and (if ``want_map``) the
    N×1×H×W per-pixel l_r = rho * mean_c |x - x_hat| / L + (1 - rho) * (1 - MS-SSIM map),
    both from one pass of the SSIM kernels. The one place this formula lives."""
    check_image_pair(x, x_hat, config, what=what)
    values, ms_map = _values_and_map(x, x_hat, config, want_map, _backends.resolve(x.device, backend))
    dt = values.dtype
    diff = x.to(dt) - x_hat.to(dt)
    # sum_c |x - x_hat|; every channel has H×W pixels, so the image MAE is the mean of this
    # map / C (1/C folded into the scale). linalg.vector_norm over dim 1 is ~20x slower.
    err = (diff.abs() if diff.requires_grad else diff.abs_()).sum(1, keepdim=True)
    scale = rho / config.data_range / diff.shape[1]
    per_image = scale * err.mean(dim=(1, 2, 3)) + (1 - rho) * (1 - values.mean(1))
    if not want_map:
        return per_image, None
    # in place on a tensor autograd does not need: no extra map-sized allocations
    maps = err.mul_(scale) if not err.requires_grad else err * scale
    return per_image, maps.sub_(ms_map, alpha=1 - rho).add_(1 - rho)


def recon_loss(
    x: Tensor,
    x_hat: Tensor,
    rho: float = 0.15,
    config: MSSSIMConfig = GLOBAL,
    reduction: str = "mean",
    backend: str | None = None,
) -> Tensor:
    """IGD reconstruction loss rho * |x - x_hat| / L + (1 - rho) * (1 - MS-SSIM(x, x_hat)).

    Per image, then reduced. Gradients flow to ``x_hat`` (and ``x``) through our kernels.
    """
    return ref.reduce(recon_terms(x, x_hat, rho, config, False, backend)[0], reduction)


def recon_error_map(
    x: Tensor,
    x_hat: Tensor,
    rho: float = 0.15,
    config: MSSSIMConfig = GLOBAL,
    backend: str | None = None,
) -> Tensor:
    """N×1×H×W per-pixel l_r: rho * mean_c |x - x_hat| / L + (1 - rho) * (1 - MS-SSIM map)."""
    return recon_terms(x, x_hat, rho, config, True, backend)[1]
