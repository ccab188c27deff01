"""Bilinear resampling of maps (``F.interpolate(mode="bilinear", align_corners=False)``), in
the form each consumer runs fastest: eager PyTorch calls ``F.interpolate``; an exported graph
holds two MatMuls with the weights as matrices built from the sizes (OpenVINO's CPU
`Interpolate` took 7 ms for a 4×512² map and 9 ms for the MS-SSIM scale maps of the demo
model; its MatMuls far less), the same source positions and weights, sums in another order."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def bilinear(m: Tensor, size) -> Tensor:
    """N×C×h×w maps at ``size`` = (H, W), as ``F.interpolate(..., mode="bilinear",
    align_corners=False)``: that call, or :func:`bilinear_matmul` while exporting."""
    if torch.compiler.is_exporting():
        return bilinear_matmul(m, size)
    return F.interpolate(m, size=tuple(size), mode="bilinear", align_corners=False)


def bilinear_matmul(m: Tensor, size) -> Tensor:
    """:func:`bilinear` as two MatMuls, H×h by the maps by w×W (sizes may be symbolic)."""
    rows = _weights(m.shape[-2], size[0], m.device)  # H×h
    cols = _weights(m.shape[-1], size[1], m.device)  # W×w
    return torch.matmul(rows, torch.matmul(m, cols.transpose(0, 1)))


def _weights(n_in, n_out, device) -> Tensor:
    """n_out×n_in weights of PyTorch's bilinear resampling along one axis (half-pixel centres,
    the source clamped at 0, the upper neighbour clamped at the border)."""
    f32 = dict(device=device, dtype=torch.float32)
    scale = torch.full((), n_in, **f32) / torch.full((), n_out, **f32)
    src = (scale * (torch.arange(n_out, **f32) + 0.5) - 0.5).clamp_min(0.0)
    lo = src.floor()
    hi = torch.minimum(lo + 1.0, torch.full((), n_in, **f32) - 1.0)
    frac = (src - lo)[:, None]
    i = torch.arange(n_in, **f32)[None, :]
    return (1.0 - frac) * (i == lo[:, None]) + frac * (i == hi[:, None])
