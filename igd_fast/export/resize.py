"""Pillow's 8-bit ``Image.resize(..., BILINEAR)`` as tensor ops an exported graph can hold at
any input size: the images the Scorer reads are resized by Pillow, so the graph resizes the
same way, not by a runtime's own Resize (OpenVINO's antialiased Resize differs from Pillow by
up to 0.44 of the pixel range; a plain bilinear one by more when downscaling).

Pillow (libImaging/Resample.c) resizes horizontally, then vertically (Pillow >= 13: vertically
first when the height shrinks by more than twice as many pixels as the width); each output pixel is a
weighted sum of the input pixels within the triangle filter's support (widened by the scale
when downscaling: its antialiasing), the weights normalised and held in fixed point (22
fractional bits), the integer sum rounded half up to 8 bits. Here each pass gathers those
taps as whole rows (the horizontal pass on the transposed image) and sums them in one MatMul,
exactly in float32: the weights are split into a high and a low part so that every partial
sum is an integer below 2**24 (int32 would hold Pillow's sums directly, but OpenVINO's CPU
plugin computes int32 sums in float32), and the parts are carried as Pillow's integer
arithmetic would (tests/test_export_deploy.py: equal to Pillow's pixels, in both runtimes).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..score.resample import PRECISION_BITS, pillow_taps

# the weights' low 7 bits are summed apart from the high 15: each sum of 8-bit values times one
# part stays below 2**24 (exact in float32, in any order) for up to 518 taps (2·ceil(n_in / n_out) + 1: 32768 -> 128)
LOW_BITS = 7


def _rows(x: Tensor, n_out) -> Tensor:
    """One of Pillow's passes along the rows (dim -2) of 8-bit values (float32): a Gather of
    whole rows (a runtime copies them as blocks; gathering along the last axis copies single
    values), then per output row a 2×K by K×W MatMul (the high and low weights' sums)."""
    idx, fixed = pillow_taps(x.shape[-2], n_out, x.device)
    g = x.index_select(-2, idx.reshape(-1)).unflatten(-2, (n_out, -1))  # N×C×n_out×K×W
    hi = torch.div(fixed, 1 << LOW_BITS, rounding_mode="floor")
    k = torch.stack([hi, fixed - hi * (1 << LOW_BITS)], 1).to(torch.float32)  # n_out×2×K
    s = torch.matmul(k, g)  # N×C×n_out×2×W: both sums over the taps in one MatMul
    s_hi, s_lo = s[..., 0, :], s[..., 1, :]
    # (S_hi·2^7 + S_lo + 2^21) >> 22 in steps whose values stay exact integers
    carry = torch.floor(s_lo / 2**LOW_BITS) + 2 ** (PRECISION_BITS - 1 - LOW_BITS)
    return torch.floor((s_hi + carry) / 2 ** (PRECISION_BITS - LOW_BITS)).clamp(0.0, 255.0)


def _horizontal_first(x: Tensor, h, w) -> Tensor:
    return _rows(_rows(x.transpose(-1, -2), w).transpose(-1, -2), h).contiguous()


def _vertical_first(x: Tensor, h, w) -> Tensor:
    return _rows(_rows(x, h).transpose(-1, -2), w).transpose(-1, -2).contiguous()


def pillow_resize(pixels: Tensor, size) -> Tensor:
    """N×3×H×W RGB in [0, 1] -> N×3×h×w in [0, 1] at ``size`` = (h, w), as Pillow resizes the
    8-bit image (the input is first taken to 8 bits as the Scorer reads float arrays: rounded).
    An image with a NaN or infinite pixel comes out all NaN, where the Scorer refuses it (a graph
    cannot refuse: this way its score is NaN, and so anomalous, never a number called normal)."""
    bad = pixels.float().sum(dim=(-3, -2, -1), keepdim=True) * 0.0  # 0, or NaN for such an image
    return _resize_8bit(torch.round(pixels.float() * 255.0).clamp(0.0, 255.0), size) / 255.0 + bad


def _resize_8bit(x: Tensor, size) -> Tensor:
    """Pillow's two passes over 8-bit values ``x`` (float32), in the order Pillow runs them."""
    h, w = size
    if not VERTICAL_FIRST:
        return _horizontal_first(x, h, w)
    # Pillow >= 13 (python-pillow/Pillow#9549) runs the vertical pass first when the height
    # shrinks by more than twice as many pixels as the width; in a graph the sizes are only
    # known when it runs
    i64 = dict(device=x.device, dtype=torch.int64)
    dh = torch.full((), x.shape[-2], **i64) - torch.full((), h, **i64)
    dw = torch.full((), x.shape[-1], **i64) - torch.full((), w, **i64)
    first = (dh > 0) & (dh > 2 * dw)
    if not (torch.compiler.is_compiling() or torch.compiler.is_exporting()):  # eager: the order is known
        return (_vertical_first if first else _horizontal_first)(x, h, w)
    if isinstance(h, int) and isinstance(w, int):
        # a fixed output size: a torch.cond (an ONNX If, an OpenVINO If), so one order runs
        return torch.cond(first, lambda t: _vertical_first(t, h, w), lambda t: _horizontal_first(t, h, w), (x,))
    # a size that follows the input's (aspect kept) would enter torch.cond's branches as new
    # symbols, unrelated to the input's (torch 2.13), and the graph after would lose its
    # shapes: both orders are computed and one kept
    return torch.where(first, _vertical_first(x, h, w), _horizontal_first(x, h, w))


def _pillow_major() -> int:
    import PIL

    try:
        return int(PIL.__version__.split(".")[0])
    except ValueError:  # pragma: no cover - a development version string
        return 13


# the pass order of the Pillow this package reads images with (the graph is made to match it)
VERTICAL_FIRST = _pillow_major() >= 13
