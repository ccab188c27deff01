"""Reference patch extraction, scoring, folding and max-pooling (the ``torch`` backend).

Geometry (the edge rule every backend follows): along an axis of ``length`` pixels,
patches of ``size`` start at 0, stride, 2·stride, ... as long as they fit; if the last
one does not reach the border, one more patch starts at ``length - size`` (flush with
the border). Equivalently start(i) = min(i·stride, length - size) for
i < ceil((length - size) / stride) + 1. Patches of an image are ordered row-major
(patch p = i·n_cols + j); images follow each other (global index n·P + p).

A grid is at most four regular sub-grids (regular rows/cols × the flush row/col), so
``F.unfold`` / ``F.fold`` with the stride do the work, as in the published code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import MSSSIMConfig
from . import ssim as ref_ssim


def grid_starts(length: int, size: int, stride: int) -> tuple[int, ...]:
    """Patch start positions along one axis (see the module docstring for the rule)."""
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] + size < length:
        starts.append(length - size)
    return tuple(starts)


def _blocks(length: int, size: int, stride: int):
    """(index slice, offset, extent) of the regular part and of the flush patch, if any."""
    starts = grid_starts(length, size, stride)
    n_reg = (length - size) // stride + 1
    out = [(slice(0, n_reg), 0, length)]
    if len(starts) > n_reg:
        out.append((slice(n_reg, n_reg + 1), length - size, size))
    return out


def _sub_grids(height: int, width: int, size: int, stride: int):
    for rs, ro, rh in _blocks(height, size, stride):
        for cs, co, cw in _blocks(width, size, stride):
            yield rs, cs, ro, co, rh, cw


def extract_patches(images: torch.Tensor, size: int, stride: int) -> torch.Tensor:
    """(N·P)×C×size×size patches with ``F.unfold`` (the pytorch-style peer)."""
    n, c, h, w = images.shape
    nr, nc = len(grid_starts(h, size, stride)), len(grid_starts(w, size, stride))
    out = images.new_empty((n, nr, nc, c, size, size))
    for rs, cs, ro, co, rh, cw in _sub_grids(h, w, size, stride):
        cols = F.unfold(images[..., ro : ro + rh, co : co + cw], size, stride=stride)
        a, b = rs.stop - rs.start, cs.stop - cs.start
        out[:, rs, cs] = cols.view(n, c, size, size, a, b).permute(0, 4, 5, 1, 2, 3)
    return out.view(n * nr * nc, c, size, size)


def gather_patches(images: torch.Tensor, size: int, stride: int) -> torch.Tensor:
    """The patches of :func:`extract_patches`, gathered as whole rows: rows of every patch row,
    then (transposed) its columns. An exported graph copies rows as blocks, while ``F.unfold``
    exports as a gather along the last axis, one value at a time."""
    n, c, h, w = images.shape
    off = torch.arange(size, device=images.device)
    rows = (torch.tensor(grid_starts(h, size, stride), device=images.device)[:, None] + off).reshape(-1)
    cols = (torch.tensor(grid_starts(w, size, stride), device=images.device)[:, None] + off).reshape(-1)
    nr, nc = rows.numel() // size, cols.numel() // size
    x = images.index_select(2, rows).transpose(2, 3).index_select(2, cols).transpose(2, 3)  # N×C×(nr·size)×(nc·size)
    # the last axis stays last: the permutation copies runs of ``size`` values
    return x.reshape(n, c, nr, size, nc, size).permute(0, 2, 4, 1, 3, 5).reshape(n * nr * nc, c, size, size)


def _fold_sum(patch_maps: torch.Tensor, height: int, width: int, size: int, stride: int):
    """Sum of overlapping patches with ``F.fold`` per regular sub-grid."""
    nr, nc = len(grid_starts(height, size, stride)), len(grid_starts(width, size, stride))
    c = patch_maps.shape[1]
    maps = patch_maps.reshape(-1, nr, nc, c, size, size)
    n = maps.shape[0]
    out = maps.new_zeros((n, c, height, width))
    for rs, cs, ro, co, rh, cw in _sub_grids(height, width, size, stride):
        sub = maps[:, rs, cs]
        a, b = sub.shape[1:3]
        cols = sub.permute(0, 3, 4, 5, 1, 2).reshape(n, c * size * size, a * b)
        out[..., ro : ro + rh, co : co + cw] += F.fold(cols, (rh, cw), size, stride=stride)
    return out


def _fold_max(patch_maps: torch.Tensor, height: int, width: int, size: int, stride: int):
    """Per-pixel max over covering patches: one scatter_reduce onto the image."""
    rows = torch.tensor(grid_starts(height, size, stride), device=patch_maps.device)
    cols = torch.tensor(grid_starts(width, size, stride), device=patch_maps.device)
    nr, nc, c = rows.numel(), cols.numel(), patch_maps.shape[1]
    off = torch.arange(size, device=patch_maps.device)
    yy = (rows[:, None] + off[None, :])[:, None, :, None]  # nr×1×s×1
    xx = (cols[:, None] + off[None, :])[None, :, None, :]  # 1×nc×1×s
    target = (yy * width + xx).reshape(-1)  # pixel of every (i, j, u, v)
    maps = patch_maps.reshape(-1, nr, nc, c, size, size)
    n = maps.shape[0]
    src = maps.permute(0, 3, 1, 2, 4, 5).reshape(n, c, -1)
    out = src.new_full((n, c, height * width), float("-inf"))
    out.scatter_reduce_(2, target.expand(n, c, -1), src, reduce="amax")
    return out.view(n, c, height, width)


def fold_patch_maps(
    patch_maps: torch.Tensor, height: int, width: int, size: int, stride: int, mode: str
) -> torch.Tensor:
    """Backend entry point: (N·P)×C×s×s patch maps -> N×C×H×W (``mean``, ``sum`` or ``max``)."""
    dt = ref_ssim.compute_dtype(patch_maps.dtype)
    m = patch_maps.to(dt)
    if mode == "max":
        out = _fold_max(m, height, width, size, stride)
    else:
        out = _fold_sum(m, height, width, size, stride)
        if mode == "mean":
            p = len(grid_starts(height, size, stride)) * len(grid_starts(width, size, stride))
            out = out / _fold_sum(torch.ones_like(m[:p]), height, width, size, stride)
        elif mode != "sum":
            raise ValueError(f"mode must be 'mean', 'sum' or 'max', got {mode!r}")
    return out.to(patch_maps.dtype)


def anomaly_map(scores: torch.Tensor, height: int, width: int, size: int, stride: int):
    """Backend entry point: N×P scores -> (N×1×H×W max over covering patches,
    N image scores, N first index of the worst patch)."""
    n, p = scores.shape
    per_pixel = scores.reshape(n * p, 1, 1, 1).expand(n * p, 1, size, size)
    pixel_map = fold_patch_maps(per_pixel, height, width, size, stride, "max")
    worst = scores.argmax(1)  # the first maximum
    return pixel_map, scores.gather(1, worst[:, None])[:, 0], worst


def patch_scores(
    patches: torch.Tensor,
    recon: torch.Tensor,
    config: MSSSIMConfig,
    rho: float = 0.15,
    extra: torch.Tensor | None = None,
):
    """Per patch rho·MAE/L + (1-rho)(1 - MS-SSIM) (+ extra) and the per-pixel maps."""
    mae = ref_ssim.abs_error(patches, recon).mean(dim=(1, 2, 3))
    ms = ref_ssim.ms_ssim(patches, recon, config, "none")
    scores = rho * mae / config.data_range + (1 - rho) * (1 - ms)
    if extra is not None:
        scores = scores + extra
    return scores, ref_ssim.recon_error_map(patches, recon, config, rho)
