"""Triton SSIM kernels (the ``triton`` backend): ``ssim_scale``, ``ssim_scale_backward``,
``combine_maps`` with the semantics of :mod:`igd_fast.reference.ssim`.

A program owns a BH×BW tile of outputs of one (n, c) plane, forms the five filtered
moments in registers (never in memory), then the SSIM / cs values, the masked tile sums
(atomically added, scaled by 1/(Ho·Wo), into the per-plane means) and, when asked, the
maps. The separable window is applied in one of two ways (``USE_DOT``):

* GPU (default there): K×K shifted loads of the inputs, which stay in L1: horizontal
  sums per vertical tap, then the vertical sum; every output of the tile is valid.
* CPU interpreter (default there): the tile is loaded once and filtered as two products
  with banded Toeplitz tap matrices, ``Wv @ (Q @ Wh)`` with ``Wv[o, a] = w[a - o]`` and
  ``Wh[a, o] = w[a - o]``; only the first BH-K+1 × BW-K+1 outputs are valid, so tiles
  step by that and overlap by the halo. Under ``TRITON_INTERPRET=1`` a product is one
  numpy matmul, so a 64×64 plane costs a few dozen array operations whatever K is.

The backward is two launches: (1) the same moments, then the per-pixel gradients with
respect to the filtered moments (G_mu_y, G_var, G_cov[, G_mu_x]) at output size;
(2) the adjoint filter (flipped taps, input offset -(K-1)) of those maps, fused with the
product rule back to pixels. Everything accumulates in fp32 (fp64 for float64 inputs;
the products use IEEE precision, no TF32).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from igd_fast.config import gaussian_window

_MAX_TILE = 64
_MIN_TILE = 16  # tl.dot needs every dimension >= 16


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _tl_acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _taps(win_size: int, sigma: float, device, dtype, flip: bool = False) -> torch.Tensor:
    """The window of :func:`igd_fast.config.gaussian_window`, cast (flipped for the adjoint)."""
    g = gaussian_window(win_size, sigma)
    return torch.tensor(g[::-1] if flip else g, dtype=torch.float64).to(device=device, dtype=dtype)


def _dot_tile(extent: int) -> int:
    return max(_MIN_TILE, min(_MAX_TILE, triton.next_power_of_2(extent)))


# How the filters run: None = banded-matrix products under the CPU interpreter (a few
# numpy matmuls per program) and K×K shifted, cache-resident loads on GPUs (IEEE fp32
# products there fall back to unrolled FMA loops that spill); True / False force one.
USE_DOT: bool | None = None


def _plan(h: int, w: int, k: int, device: torch.device):
    """(BH, BW, SH, SW, USE_DOT, num_warps): tile shape, tile step and filter path."""
    use_dot = USE_DOT if USE_DOT is not None else device.type != "cuda"
    if use_dot:
        bh, bw = _dot_tile(h), _dot_tile(w)
        return bh, bw, bh - k + 1, bw - k + 1, True, 8 if bh * bw >= 64 * 64 else 4
    bw = 64 if w - k + 1 > 32 else 32
    bh = 16 if bw == 64 else 32
    return bh, bw, bh, bw, False, 4


@triton.jit
def _tile(tiles_x, tiles_y, SH: tl.constexpr, SW: tl.constexpr):
    """program -> (plane, first output row, first output column); tiles step by SH×SW."""
    pid = tl.program_id(0)
    t = pid // tiles_x
    plane = (t // tiles_y).to(tl.int64)
    return plane, (t % tiles_y) * SH, (pid % tiles_x) * SW


@triton.jit
def _band(w_ptr, B: tl.constexpr, K: tl.constexpr, TRANSPOSED: tl.constexpr):
    """B×B banded tap matrix: M[o, a] = w[a - o] (TRANSPOSED: M[a, o] = w[a - o])."""
    i = tl.arange(0, B)
    if TRANSPOSED:
        d = i[:, None] - i[None, :]
    else:
        d = i[None, :] - i[:, None]
    return tl.load(w_ptr + d, mask=(d >= 0) & (d < K), other=0.0)


@triton.jit
def _moments(
    x_ptr,
    y_ptr,
    w_ptr,
    base,
    r0,
    c0,
    H,
    W,
    HO,
    WO,
    K: tl.constexpr,
    BH: tl.constexpr,
    BW: tl.constexpr,
    ACC: tl.constexpr,
    PREC: tl.constexpr,
    USE_DOT: tl.constexpr,
):
    """The five filtered moments at outputs r0 + [0, BH) × c0 + [0, BW).

    USE_DOT: one tile load of x and y, filters as products with banded tap matrices
    (only the first BH-K+1 × BW-K+1 outputs are valid). Otherwise: K×K shifted loads
    (L1-resident), horizontal sums per vertical tap, every output valid.
    """
    rows = r0 + tl.arange(0, BH)
    cols = c0 + tl.arange(0, BW)
    if USE_DOT:
        m = (rows[:, None] < H) & (cols[None, :] < W)
        offs = base + rows[:, None] * W + cols[None, :]
        x = tl.load(x_ptr + offs, mask=m, other=0.0).to(ACC)
        y = tl.load(y_ptr + offs, mask=m, other=0.0).to(ACC)
        wv = _band(w_ptr, BH, K, False)
        wh = _band(w_ptr, BW, K, True)
        mu_x = tl.dot(wv, tl.dot(x, wh, input_precision=PREC), input_precision=PREC)
        mu_y = tl.dot(wv, tl.dot(y, wh, input_precision=PREC), input_precision=PREC)
        exx = tl.dot(wv, tl.dot(x * x, wh, input_precision=PREC), input_precision=PREC)
        eyy = tl.dot(wv, tl.dot(y * y, wh, input_precision=PREC), input_precision=PREC)
        exy = tl.dot(wv, tl.dot(x * y, wh, input_precision=PREC), input_precision=PREC)
    else:
        om = (rows[:, None] < HO) & (cols[None, :] < WO)
        p0 = base + rows[:, None] * W + cols[None, :]
        mu_x = tl.zeros([BH, BW], ACC)
        mu_y = tl.zeros([BH, BW], ACC)
        exx = tl.zeros([BH, BW], ACC)
        eyy = tl.zeros([BH, BW], ACC)
        exy = tl.zeros([BH, BW], ACC)
        for i in range(K):
            hx = tl.zeros([BH, BW], ACC)
            hy = tl.zeros([BH, BW], ACC)
            hxx = tl.zeros([BH, BW], ACC)
            hyy = tl.zeros([BH, BW], ACC)
            hxy = tl.zeros([BH, BW], ACC)
            for j in range(K):
                wj = tl.load(w_ptr + j)
                xv = tl.load(x_ptr + p0 + (i * W + j), mask=om, other=0.0).to(ACC)
                yv = tl.load(y_ptr + p0 + (i * W + j), mask=om, other=0.0).to(ACC)
                wx = wj * xv
                wy = wj * yv
                hx += wx
                hy += wy
                hxx += wx * xv
                hyy += wy * yv
                hxy += wx * yv
            wi = tl.load(w_ptr + i)
            mu_x += wi * hx
            mu_y += wi * hy
            exx += wi * hxx
            eyy += wi * hyy
            exy += wi * hxy
    return mu_x, mu_y, exx, eyy, exy


@triton.jit
def _ssim_terms(mu_x, mu_y, exx, eyy, exy, c1, c2):
    """lum = a1 / b1 and cs = a2 / b2 from the five moments (reference ``ssim_maps``)."""
    sxx = exx - mu_x * mu_x
    syy = eyy - mu_y * mu_y
    sxy = exy - mu_x * mu_y
    return 2.0 * mu_x * mu_y + c1, mu_x * mu_x + mu_y * mu_y + c1, 2.0 * sxy + c2, sxx + syy + c2


@triton.jit
def _ssim_scale_kernel(
    x_ptr,
    y_ptr,
    w_ptr,
    mean0_ptr,
    mean1_ptr,
    map0_ptr,
    map1_ptr,
    ws_ptr,
    ws_stride,
    H,
    W,
    HO,
    WO,
    tiles_x,
    tiles_y,
    c1,
    c2,
    inv_npix,
    K: tl.constexpr,
    BH: tl.constexpr,
    BW: tl.constexpr,
    SH: tl.constexpr,
    SW: tl.constexpr,
    ACC: tl.constexpr,
    PREC: tl.constexpr,
    USE_DOT: tl.constexpr,
    BACKWARD: tl.constexpr,
    MAP0: tl.constexpr,
    MAP1: tl.constexpr,
    NEED_GX: tl.constexpr,
):
    """One scale at outputs of one tile. Forward: mean0/mean1 += the tile's SSIM / cs sums
    (scaled by inv_npix), and the maps into map0/map1 (MAP0: both). Backward (pass 1):
    mean0/mean1 are the mean gradients, map0/map1 the map gradients (MAP0/MAP1: present);
    writes G_mu_y, G_var, G_cov[, G_mu_x] at ws + m * ws_stride."""
    plane, r0, c0 = _tile(tiles_x, tiles_y, SH, SW)
    mu_x, mu_y, exx, eyy, exy = _moments(
        x_ptr, y_ptr, w_ptr, plane * H * W, r0, c0, H, W, HO, WO, K, BH, BW, ACC, PREC, USE_DOT
    )
    a1, b1, a2, b2 = _ssim_terms(mu_x, mu_y, exx, eyy, exy, c1, c2)
    lum = a1 / b1
    cs = a2 / b2
    o_r = tl.arange(0, BH)
    o_c = tl.arange(0, BW)
    valid = (o_r[:, None] < SH) & (r0 + o_r[:, None] < HO) & (o_c[None, :] < SW) & (c0 + o_c[None, :] < WO)
    offs = plane * HO * WO + (r0 + o_r[:, None]) * WO + (c0 + o_c[None, :])
    if BACKWARD:
        g_s = tl.load(mean0_ptr + plane).to(ACC) * inv_npix
        g_c = tl.load(mean1_ptr + plane).to(ACC) * inv_npix
        if MAP0:
            g_s = g_s + tl.load(map0_ptr + offs, mask=valid, other=0.0).to(ACC)
        if MAP1:
            g_c = g_c + tl.load(map1_ptr + offs, mask=valid, other=0.0).to(ACC)
        g_lum = g_s * cs
        g_cs = g_s * lum + g_c
        g_var = -g_cs * cs / b2
        g_cov = 2.0 * g_cs / b2
        t = 2.0 * g_lum / b1
        g_mu_y = t * (mu_x - lum * mu_y) - 2.0 * g_var * mu_y - g_cov * mu_x
        tl.store(ws_ptr + offs, g_mu_y, mask=valid)
        tl.store(ws_ptr + ws_stride + offs, g_var, mask=valid)
        tl.store(ws_ptr + 2 * ws_stride + offs, g_cov, mask=valid)
        if NEED_GX:
            g_mu_x = t * (mu_y - lum * mu_x) - 2.0 * g_var * mu_x - g_cov * mu_y
            tl.store(ws_ptr + 3 * ws_stride + offs, g_mu_x, mask=valid)
    else:
        s = lum * cs
        tl.atomic_add(mean0_ptr + plane, tl.sum(tl.sum(tl.where(valid, s, 0.0), 1), 0) * inv_npix)
        tl.atomic_add(mean1_ptr + plane, tl.sum(tl.sum(tl.where(valid, cs, 0.0), 1), 0) * inv_npix)
        if MAP0:
            tl.store(map0_ptr + offs, s, mask=valid)
            tl.store(map1_ptr + offs, cs, mask=valid)


@triton.jit
def _adjoint_dot(ptr, goffs, gm, wv, wh, PREC: tl.constexpr):
    return tl.dot(wv, tl.dot(tl.load(ptr + goffs, mask=gm, other=0.0), wh, input_precision=PREC), input_precision=PREC)


@triton.jit
def _ssim_adjoint_kernel(
    ws_ptr,
    wf_ptr,
    x_ptr,
    y_ptr,
    gx_ptr,
    gy_ptr,
    H,
    W,
    HO,
    WO,
    tiles_x,
    tiles_y,
    ws_stride,
    K: tl.constexpr,
    BH: tl.constexpr,
    BW: tl.constexpr,
    SH: tl.constexpr,
    SW: tl.constexpr,
    ACC: tl.constexpr,
    PREC: tl.constexpr,
    USE_DOT: tl.constexpr,
    NEED_GX: tl.constexpr,
):
    """Full-size outputs r0 + [0, BH) × c0 + [0, BW): the flipped-window filter of the
    moment gradients read at offset -(K-1) (zero outside the maps), then the product rule."""
    plane, r0, c0 = _tile(tiles_x, tiles_y, SH, SW)
    gbase = plane * HO * WO
    rows = r0 + tl.arange(0, BH)
    cols = c0 + tl.arange(0, BW)
    if USE_DOT:
        gr = rows - (K - 1)
        gc = cols - (K - 1)
        gm = (gr[:, None] >= 0) & (gr[:, None] < HO) & (gc[None, :] >= 0) & (gc[None, :] < WO)
        goffs = gbase + gr[:, None] * WO + gc[None, :]
        wv = _band(wf_ptr, BH, K, False)
        wh = _band(wf_ptr, BW, K, True)
        a_mu_y = _adjoint_dot(ws_ptr, goffs, gm, wv, wh, PREC)
        a_var = _adjoint_dot(ws_ptr + ws_stride, goffs, gm, wv, wh, PREC)
        a_cov = _adjoint_dot(ws_ptr + 2 * ws_stride, goffs, gm, wv, wh, PREC)
        if NEED_GX:
            a_mu_x = _adjoint_dot(ws_ptr + 3 * ws_stride, goffs, gm, wv, wh, PREC)
        else:
            a_mu_x = tl.zeros([BH, BW], ACC)
    else:
        om = (rows[:, None] < H) & (cols[None, :] < W)
        a_mu_y = tl.zeros([BH, BW], ACC)
        a_var = tl.zeros([BH, BW], ACC)
        a_cov = tl.zeros([BH, BW], ACC)
        a_mu_x = tl.zeros([BH, BW], ACC)
        for i in range(K):
            gr = rows - (K - 1) + i
            rm = om & ((gr >= 0) & (gr < HO))[:, None]
            h0 = tl.zeros([BH, BW], ACC)
            h1 = tl.zeros([BH, BW], ACC)
            h2 = tl.zeros([BH, BW], ACC)
            h3 = tl.zeros([BH, BW], ACC)
            for j in range(K):
                gc = cols - (K - 1) + j
                m = rm & ((gc >= 0) & (gc < WO))[None, :]
                goffs = gbase + gr[:, None] * WO + gc[None, :]
                wj = tl.load(wf_ptr + j)
                h0 += wj * tl.load(ws_ptr + goffs, mask=m, other=0.0)
                h1 += wj * tl.load(ws_ptr + ws_stride + goffs, mask=m, other=0.0)
                h2 += wj * tl.load(ws_ptr + 2 * ws_stride + goffs, mask=m, other=0.0)
                if NEED_GX:
                    h3 += wj * tl.load(ws_ptr + 3 * ws_stride + goffs, mask=m, other=0.0)
            wi = tl.load(wf_ptr + i)
            a_mu_y += wi * h0
            a_var += wi * h1
            a_cov += wi * h2
            a_mu_x += wi * h3
    o_r = tl.arange(0, BH)
    o_c = tl.arange(0, BW)
    valid = (o_r[:, None] < SH) & (r0 + o_r[:, None] < H) & (o_c[None, :] < SW) & (c0 + o_c[None, :] < W)
    offs = plane * H * W + (r0 + o_r[:, None]) * W + (c0 + o_c[None, :])
    x = tl.load(x_ptr + offs, mask=valid, other=0.0).to(ACC)
    y = tl.load(y_ptr + offs, mask=valid, other=0.0).to(ACC)
    gy = a_mu_y + 2.0 * y * a_var + x * a_cov
    tl.store(gy_ptr + offs, gy.to(gy_ptr.dtype.element_ty), mask=valid)
    if NEED_GX:
        gx = a_mu_x + 2.0 * x * a_var + y * a_cov
        tl.store(gx_ptr + offs, gx.to(gx_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _combine_kernel(
    m_ptr,
    out_ptr,
    total,
    MH,
    MW,
    OUT_H,
    OUT_W,
    R,
    weight,
    scale_y,
    scale_x,
    RESIZE: tl.constexpr,
    FIRST: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """out (*)= relu(U(m)) ** weight, U = replicate-pad by R then bilinear to OUT_H×OUT_W."""
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = i < total
    ox = (i % OUT_W).to(tl.int32)
    oy = ((i // OUT_W) % OUT_H).to(tl.int32)
    plane = i // (OUT_W * OUT_H)
    base = m_ptr + plane * MH * MW
    if RESIZE:
        ph = MH + 2 * R
        pw = MW + 2 * R
        fy = tl.maximum(scale_y * (oy.to(tl.float32) + 0.5) - 0.5, 0.0)
        fx = tl.maximum(scale_x * (ox.to(tl.float32) + 0.5) - 0.5, 0.0)
        y0 = fy.to(tl.int32)
        x0 = fx.to(tl.int32)
        y1 = y0 + (y0 < ph - 1).to(tl.int32)
        x1 = x0 + (x0 < pw - 1).to(tl.int32)
        ly = fy - y0.to(tl.float32)
        lx = fx - x0.to(tl.float32)
        my0 = tl.minimum(tl.maximum(y0 - R, 0), MH - 1)
        my1 = tl.minimum(tl.maximum(y1 - R, 0), MH - 1)
        mx0 = tl.minimum(tl.maximum(x0 - R, 0), MW - 1)
        mx1 = tl.minimum(tl.maximum(x1 - R, 0), MW - 1)
        v00 = tl.load(base + my0 * MW + mx0, mask=ok, other=0.0)
        v01 = tl.load(base + my0 * MW + mx1, mask=ok, other=0.0)
        v10 = tl.load(base + my1 * MW + mx0, mask=ok, other=0.0)
        v11 = tl.load(base + my1 * MW + mx1, mask=ok, other=0.0)
        ly = ly.to(v00.dtype)
        lx = lx.to(v00.dtype)
        v = (1.0 - ly) * ((1.0 - lx) * v00 + lx * v01) + ly * ((1.0 - lx) * v10 + lx * v11)
    else:
        sy = tl.minimum(tl.maximum(oy - R, 0), MH - 1)
        sx = tl.minimum(tl.maximum(ox - R, 0), MW - 1)
        v = tl.load(base + sy * MW + sx, mask=ok, other=0.0)
    pos = v > 0.0
    term = tl.where(pos, tl.exp(weight * tl.log(tl.where(pos, v, 1.0))), 0.0)
    if FIRST:
        tl.store(out_ptr + i, term, mask=ok)
    else:
        prev = tl.load(out_ptr + i, mask=ok, other=0.0)
        tl.store(out_ptr + i, prev * term, mask=ok)


# ---------------------------------------------------------------------- entry points


def _grid(planes: int, out_h: int, out_w: int, sh: int, sw: int):
    tiles_y, tiles_x = triton.cdiv(out_h, sh), triton.cdiv(out_w, sw)
    return tiles_x, tiles_y, (planes * tiles_x * tiles_y,)


def _check(x: torch.Tensor, y: torch.Tensor, win_size: int) -> None:
    if x.dim() != 4 or x.shape != y.shape or x.dtype != y.dtype or x.device != y.device:
        raise ValueError("ssim (triton): x and y must be N×C×H×W tensors of one shape, dtype and device")
    if win_size < 1 or win_size % 2 != 1 or win_size > 15:
        raise ValueError(f"ssim (triton): win_size must be odd and in [1, 15], got {win_size}")
    if min(x.shape[-2:]) < win_size:
        raise ValueError("ssim (triton): image smaller than the window")


_PREC = "ieee"


def _launch_scale(x, y, k, sigma, c1, c2, means, maps, ws, backward, map0, map1, need_gx):
    """Run _ssim_scale_kernel over every tile of x, y (contiguous N×C×H×W)."""
    n, c, h, w = x.shape
    ho, wo = h - k + 1, w - k + 1
    bh, bw, sh, sw, use_dot, warps = _plan(h, w, k, x.device)
    tiles_x, tiles_y, grid = _grid(n * c, ho, wo, sh, sw)
    _ssim_scale_kernel[grid](
        x,
        y,
        _taps(k, sigma, x.device, _acc_dtype(x.dtype)),
        *means,
        *maps,
        ws,
        n * c * ho * wo,
        h,
        w,
        ho,
        wo,
        tiles_x,
        tiles_y,
        float(c1),
        float(c2),
        1.0 / (ho * wo),
        K=k,
        BH=bh,
        BW=bw,
        SH=sh,
        SW=sw,
        ACC=_tl_acc(x.dtype),
        PREC=_PREC,
        USE_DOT=use_dot,
        BACKWARD=backward,
        MAP0=map0,
        MAP1=map1,
        NEED_GX=need_gx,
        num_warps=warps,
    )


def ssim_scale(x, y, win_size, sigma, c1, c2, want_maps):
    """(ssim_mean N×C, cs_mean N×C, ssim_map | empty, cs_map | empty) in float32/float64."""
    _check(x, y, win_size)
    x, y = x.contiguous(), y.contiguous()
    n, c, h, w = x.shape
    k = int(win_size)
    ho, wo = h - k + 1, w - k + 1
    acc = _acc_dtype(x.dtype)
    s_sum = torch.zeros((n, c), device=x.device, dtype=acc)
    cs_sum = torch.zeros((n, c), device=x.device, dtype=acc)
    if want_maps:
        s_map = torch.empty((n, c, ho, wo), device=x.device, dtype=acc)
        cs_map = torch.empty((n, c, ho, wo), device=x.device, dtype=acc)
    else:
        s_map = torch.empty(0, device=x.device, dtype=acc)
        cs_map = torch.empty(0, device=x.device, dtype=acc)
    if n * c == 0:
        return s_sum, cs_sum, s_map, cs_map
    maps = (s_map, cs_map) if want_maps else (s_sum, cs_sum)
    _launch_scale(x, y, k, sigma, c1, c2, (s_sum, cs_sum), maps, s_sum, False, bool(want_maps), False, False)
    return s_sum, cs_sum, s_map, cs_map


def ssim_scale_backward(x, y, win_size, sigma, c1, c2, g_s_mean, g_cs_mean, g_s_map, g_cs_map, need_gx):
    """(gx | empty, gy) in the input dtype; map gradients may be empty (= zero)."""
    _check(x, y, win_size)
    x, y = x.contiguous(), y.contiguous()
    n, c, h, w = x.shape
    k = int(win_size)
    ho, wo = h - k + 1, w - k + 1
    acc = _acc_dtype(x.dtype)
    planes = n * c
    gy = torch.empty_like(x, memory_format=torch.contiguous_format)
    gx = torch.empty_like(x, memory_format=torch.contiguous_format) if need_gx else x.new_empty(0)
    if planes == 0:
        return gx, gy
    gsm = g_s_mean.to(acc).contiguous().reshape(-1)
    gcm = g_cs_mean.to(acc).contiguous().reshape(-1)
    if gsm.numel() != planes or gcm.numel() != planes:
        raise ValueError("ssim_scale_backward (triton): g_ssim_mean and g_cs_mean must be N×C")
    has_gs = g_s_map.numel() > 0
    has_gc = g_cs_map.numel() > 0
    gs_map = g_s_map.to(acc).contiguous() if has_gs else gsm
    gc_map = g_cs_map.to(acc).contiguous() if has_gc else gcm
    for name, t, has in (("g_ssim_map", gs_map, has_gs), ("g_cs_map", gc_map, has_gc)):
        if has and t.numel() != planes * ho * wo:
            raise ValueError(
                f"ssim_scale_backward (triton): {name} has {t.numel()} elements, expected {planes * ho * wo}"
            )
    ws_stride = planes * ho * wo
    ws = torch.empty((4 if need_gx else 3, planes, ho, wo), device=x.device, dtype=acc)
    _launch_scale(x, y, k, sigma, c1, c2, (gsm, gcm), (gs_map, gc_map), ws, True, has_gs, has_gc, bool(need_gx))
    bh, bw, sh, sw, use_dot, warps = _plan(h, w, k, x.device)
    tacc = _tl_acc(x.dtype)
    tiles_x, tiles_y, grid = _grid(planes, h, w, sh, sw)
    _ssim_adjoint_kernel[grid](
        ws,
        _taps(k, sigma, x.device, acc, flip=True),
        x,
        y,
        gx if need_gx else gy,
        gy,
        h,
        w,
        ho,
        wo,
        tiles_x,
        tiles_y,
        ws_stride,
        K=k,
        BH=bh,
        BW=bw,
        SH=sh,
        SW=sw,
        ACC=tacc,
        PREC=_PREC,
        USE_DOT=use_dot,
        NEED_GX=bool(need_gx),
        num_warps=warps,
    )
    return gx, gy


def combine_maps(maps, weights, out_h, out_w, win_size):
    """N×C×out_h×out_w: prod_j relu(U_j(m_j)) ** w_j (see reference.combine_maps)."""
    if len(maps) == 0 or len(maps) != len(weights):
        raise ValueError("combine_maps (triton): one weight per map, at least one map")
    dt = torch.float64 if maps[0].dtype == torch.float64 else torch.float32
    n, c = maps[0].shape[:2]
    out = torch.empty((n, c, out_h, out_w), device=maps[0].device, dtype=dt)
    total = out.numel()
    if total == 0:
        return out
    r = win_size // 2
    block = 4096 if maps[0].device.type == "cpu" else 1024
    grid = (triton.cdiv(total, block),)
    for j, (m, wgt) in enumerate(zip(maps, weights)):
        m = m.to(dt).contiguous()
        mh, mw = m.shape[-2:]
        ph, pw = mh + 2 * r, mw + 2 * r
        resize = (ph, pw) != (out_h, out_w)
        _combine_kernel[grid](
            m,
            out,
            total,
            mh,
            mw,
            out_h,
            out_w,
            r,
            float(wgt),
            float(ph) / out_h,
            float(pw) / out_w,
            RESIZE=resize,
            FIRST=j == 0,
            BLOCK=block,
        )
    return out
