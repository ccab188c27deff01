"""Resampling with the triangle (bilinear) filter widened by the scale when downscaling, as
Pillow's BILINEAR resize and ``F.interpolate(mode="bilinear", antialias=True)`` compute it,
in plain tensor ops (gathered taps): what an exported graph holds instead of an antialiased
``Resize`` (OpenVINO's differs from both by up to 0.44 of the pixel range)."""

from __future__ import annotations

import torch
from torch import Tensor

PRECISION_BITS = 22  # Pillow's fixed-point weights for 8-bit images: 32 - 8 - 2


def pillow_taps(n_in, n_out, device, fixed_point: bool = True) -> tuple[Tensor, Tensor]:
    """(n_out × K input indices, n_out × K fixed-point weights, int64) of Pillow's bilinear
    filter from ``n_in`` to ``n_out`` pixels, K = 2·ceil(n_in / n_out) + 1.

    In integers, exactly (a runtime may run float64 as float32, OpenVINO's CPU plugin does,
    and move weights by a unit): with M = max(n_in, n_out) the filter's weight of input x for
    output o is A = max(0, 2M - |(2x+1)·n_out - (2o+1)·n_in|) / (2M), normalised, and its
    fixed-point value round(A·2^22 / ΣA) is found by long division. Every intermediate stays
    below 2^31 for sides up to 16384 (int32, as OpenVINO runs int64)."""
    i64 = dict(device=device, dtype=torch.int64)
    nin, nout = torch.full((), n_in, **i64), torch.full((), n_out, **i64)
    big = torch.maximum(nin, nout)
    taps = 2 * ((n_in + n_out - 1) // n_out) + 1
    odd = 2 * torch.arange(n_out, **i64) + 1  # 2o + 1
    first = torch.div(odd * nin - 2 * big + nout, 2 * nout, rounding_mode="floor").clamp_min(0)
    idx = first[:, None] + torch.arange(taps, **i64)[None, :]
    a = (2 * big - ((2 * idx + 1) * nout - odd[:, None] * nin).abs()).clamp_min(0)
    a = torch.where(idx < nin, a, torch.zeros_like(a))
    total = a.sum(1, keepdim=True)
    if not fixed_point:  # the float weights, normalised (F.interpolate's antialias)
        return idx.clamp(max=n_in - 1), a.to(torch.float32) / total.to(torch.float32)
    q, r = torch.zeros_like(a), a
    for bits in (6, 8, 8):  # 22 bits of a / total, a chunk at a time, remainders exact
        t = r * (1 << bits)
        d = torch.div(t, total, rounding_mode="floor")
        q, r = q * (1 << bits) + d, t - d * total
    fixed = q + (2 * r >= total).to(torch.int64)  # rounded half up, as Pillow's (int)(0.5 + w·2^22)
    return idx.clamp(max=n_in - 1), fixed


def antialias_resize(x: Tensor, size) -> Tensor:
    """N×C×H×W float maps at ``size`` = (h, w): ``F.interpolate(x, size, mode="bilinear",
    align_corners=False, antialias=True)`` to float rounding, in gathers and sums."""
    for n_out, dim in ((size[1], -1), (size[0], -2)):
        if dim == -2:
            x = x.transpose(-1, -2)
        idx, w = pillow_taps(x.shape[-1], n_out, x.device, fixed_point=False)
        x = (x[..., idx] * w.to(x.dtype)).sum(-1)
        if dim == -2:
            x = x.transpose(-1, -2)
    return x
