"""Pillow's 8-bit ``Image.resize(..., BILINEAR)`` as tensor ops an exported graph can hold at
any input size: the images the Scorer reads are resized by Pillow, so the graph resizes the
same way, not by a runtime's own Resize (OpenVINO's antialiased Resize differs from Pillow by
up to 0.44 of the pixel range; a plain bilinear one by more when downscaling).

Pillow (libImaging/Resample.c) resizes horizontally, then vertically (Pillow >= 13: vertically
first when the height shrinks by more than twice as many pixels as the width); each output pixel is a
weighted sum of the input pixels within the triangle filter's support (widened by the scale
when downscaling: its antialiasing), the weights normalised and held in fixed point (22
fractional bits), the integer sum rounded half up to 8 bits. Here each pass gathers those
taps and sums them exactly in float32: the weights are split into three 7/7/8-bit parts so
that every partial sum is an integer below 2**24, and the parts are carried as Pillow's
integer arithmetic would (tests/test_export_deploy.py: equal to Pillow's pixels).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..score.resample import PRECISION_BITS, pillow_taps


def _pass(x: Tensor, n_out, dim: int) -> Tensor:
    """One of Pillow's passes along ``dim`` (-1: horizontal, -2: vertical) of 8-bit values."""
    n_in = x.shape[dim]
    idx, fixed = pillow_taps(n_in, n_out, x.device)
    k2 = torch.div(fixed, 1 << 14, rounding_mode="floor")
    k1 = torch.div(fixed - k2 * (1 << 14), 1 << 7, rounding_mode="floor")
    k0 = fixed - k2 * (1 << 14) - k1 * (1 << 7)
    if dim == -2:
        x = x.transpose(-1, -2)
    g = x[..., idx]  # N×C×rows×n_out×K
    s2, s1, s0 = ((g * k.to(torch.float32)).sum(-1) for k in (k2, k1, k0))
    # (S2·2^14 + S1·2^7 + S0 + 2^21) >> 22, in steps whose values stay exact integers
    q0 = torch.floor((s0 + float(1 << (PRECISION_BITS - 1))) / 2**7)
    q1 = torch.floor((s1 + q0) / 2**7)
    out = torch.floor((s2 + q1) / 2**8).clamp(0.0, 255.0)
    return out.transpose(-1, -2) if dim == -2 else out


def pillow_resize(pixels: Tensor, size) -> Tensor:
    """N×3×H×W RGB in [0, 1] -> N×3×h×w in [0, 1] at ``size`` = (h, w), as Pillow resizes the
    8-bit image (the input is first taken to 8 bits as the Scorer reads float arrays: rounded)."""
    x = torch.round(pixels.float() * 255.0).clamp(0.0, 255.0)
    h, w = size
    out = _pass(_pass(x, w, -1), h, -2)
    if VERTICAL_FIRST:
        # Pillow >= 13 (python-pillow/Pillow#9549) runs the vertical pass first when the height
        # shrinks by more than twice as many pixels as the width; both orders are computed
        # and one kept, as the sizes are only known when the graph runs
        i64 = dict(device=x.device, dtype=torch.int64)
        dh = torch.full((), x.shape[-2], **i64) - torch.full((), h, **i64)
        dw = torch.full((), x.shape[-1], **i64) - torch.full((), w, **i64)
        out = torch.where((dh > 0) & (dh > 2 * dw), _pass(_pass(x, h, -2), w, -1), out)
    return out / 255.0


def _pillow_major() -> int:
    import PIL

    try:
        return int(PIL.__version__.split(".")[0])
    except ValueError:  # pragma: no cover - a development version string
        return 13


# the pass order of the Pillow this package reads images with (the graph is made to match it)
VERTICAL_FIRST = _pillow_major() >= 13
