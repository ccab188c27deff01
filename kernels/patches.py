"""Triton patch kernels: fold patch maps into images, max-pool patch scores.

Gather formulation (one program per image-channel and block of output pixels, no
atomics): a pixel p is covered by patches first(p), first(p)+1, ... while
start(i) = min(i·stride, length - size) <= p, with first(p) = 0 if p < size else
(p - size) // stride + 1; at most ceil(size / stride) + 1 of them per axis.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from igd_fast._backends import triton_interpret

# the interpreter pays per program, not per element: few big blocks there
_BLOCK = 4096 if triton_interpret() else 256
_MODES = {"mean": 0, "sum": 1, "max": 2}


def _acc_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _axis(length: int, size: int, stride: int) -> tuple[int, int]:
    """(patch count, most patches covering one pixel) along an axis."""
    count = (length - size + stride - 1) // stride + 1
    return count, min(count, -(-size // stride) + 1)


@triton.jit
def _fold_kernel(
    src,
    dst,
    H,
    W,
    C,
    P,
    n_rows,
    n_cols,
    KR,
    KC,
    S: tl.constexpr,
    STRIDE: tl.constexpr,
    MODE: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    nc = tl.program_id(0).to(tl.int64)
    pix = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = pix < H * W
    y = pix // W
    x = pix % W
    n = nc // C
    c = nc % C
    lo_r = tl.where(y < S, 0, (y - S) // STRIDE + 1)
    lo_c = tl.where(x < S, 0, (x - S) // STRIDE + 1)
    if MODE == 2:
        acc = tl.full([BLOCK], float("-inf"), ACC)
    else:
        acc = tl.zeros([BLOCK], ACC)
    cnt_r = tl.zeros([BLOCK], ACC)
    for kr in range(0, KR):
        i = lo_r + kr
        sr = tl.minimum(i * STRIDE, H - S)
        ok_r = inside & (i < n_rows) & (sr <= y)
        cnt_r += ok_r.to(ACC)
        for kc in range(0, KC):
            j = lo_c + kc
            sc = tl.minimum(j * STRIDE, W - S)
            ok = ok_r & (j < n_cols) & (sc <= x)
            off = ((n * P + i * n_cols + j) * C + c) * (S * S) + (y - sr) * S + (x - sc)
            if MODE == 2:
                v = tl.load(src + off, mask=ok, other=float("-inf")).to(ACC)
                acc = tl.maximum(acc, v)
            else:
                acc += tl.load(src + off, mask=ok, other=0.0).to(ACC)
    if MODE == 0:
        cnt_c = tl.zeros([BLOCK], ACC)
        for kc in range(0, KC):
            j = lo_c + kc
            cnt_c += ((j < n_cols) & (tl.minimum(j * STRIDE, W - S) <= x)).to(ACC)
        acc = acc / tl.maximum(cnt_r * cnt_c, 1.0)  # masked lanes count 0
    tl.store(dst + nc * H * W + pix, acc.to(dst.dtype.element_ty), mask=inside)


@triton.jit
def _maxpool_kernel(
    scores,
    dst,
    H,
    W,
    P,
    n_rows,
    n_cols,
    KR,
    KC,
    S: tl.constexpr,
    STRIDE: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    pix = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = pix < H * W
    y = pix // W
    x = pix % W
    lo_r = tl.where(y < S, 0, (y - S) // STRIDE + 1)
    lo_c = tl.where(x < S, 0, (x - S) // STRIDE + 1)
    acc = tl.full([BLOCK], float("-inf"), ACC)
    for kr in range(0, KR):
        i = lo_r + kr
        ok_r = inside & (i < n_rows) & (tl.minimum(i * STRIDE, H - S) <= y)
        for kc in range(0, KC):
            j = lo_c + kc
            ok = ok_r & (j < n_cols) & (tl.minimum(j * STRIDE, W - S) <= x)
            v = tl.load(scores + n * P + i * n_cols + j, mask=ok, other=float("-inf")).to(ACC)
            acc = tl.maximum(acc, v)
    tl.store(dst + n * H * W + pix, acc.to(dst.dtype.element_ty), mask=inside)


@triton.jit
def _argmax_kernel(scores, best_out, arg_out, P, ACC: tl.constexpr, BLOCK: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    best = tl.full([], float("-inf"), ACC)
    best_i = tl.full([], 0, tl.int64)
    for start in range(0, P, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        v = tl.load(scores + n * P + offs, mask=offs < P, other=float("-inf")).to(ACC)
        m = tl.max(v, axis=0)
        first = tl.min(tl.where(v == m, offs, P), axis=0).to(tl.int64)
        # strict '>': an earlier chunk keeps ties, so the first maximum wins (torch.argmax)
        take = m > best
        best_i = tl.where(take, first, best_i)
        best = tl.where(take, m, best)
    tl.store(best_out + n, best.to(best_out.dtype.element_ty))
    tl.store(arg_out + n, best_i)


def fold_patch_maps(patch_maps, height, width, size, stride, mode):
    if mode not in _MODES:
        raise ValueError(f"mode must be 'mean', 'sum' or 'max', got {mode!r}")
    n_rows, kr = _axis(height, size, stride)
    n_cols, kc = _axis(width, size, stride)
    p = n_rows * n_cols
    patch_maps = patch_maps.contiguous()
    c = patch_maps.shape[1]
    n = patch_maps.shape[0] // p
    out = patch_maps.new_empty((n, c, height, width))
    grid = (n * c, triton.cdiv(height * width, _BLOCK))
    _fold_kernel[grid](
        patch_maps,
        out,
        height,
        width,
        c,
        p,
        n_rows,
        n_cols,
        kr,
        kc,
        S=size,
        STRIDE=stride,
        MODE=_MODES[mode],
        ACC=_acc_dtype(patch_maps.dtype),
        BLOCK=_BLOCK,
    )
    return out


def anomaly_map(scores, height, width, size, stride):
    n_rows, kr = _axis(height, size, stride)
    n_cols, kc = _axis(width, size, stride)
    scores = scores.contiguous()
    n, p = scores.shape
    acc = _acc_dtype(scores.dtype)
    pixel_map = scores.new_empty((n, 1, height, width))
    _maxpool_kernel[(n, triton.cdiv(height * width, _BLOCK))](
        scores,
        pixel_map,
        height,
        width,
        p,
        n_rows,
        n_cols,
        kr,
        kc,
        S=size,
        STRIDE=stride,
        ACC=acc,
        BLOCK=_BLOCK,
    )
    image_score = scores.new_empty((n,))
    worst = scores.new_empty((n,), dtype=torch.int64)
    _argmax_kernel[(n,)](scores, image_score, worst, p, ACC=acc, BLOCK=min(1024, triton.next_power_of_2(p)))
    return pixel_map, image_score, worst
