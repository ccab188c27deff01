"""SSIM entry points of the compiled backends (torch.ops.igd_fast_C.*)."""

from __future__ import annotations

import torch

from ..._backends import extension
from ...reference import ssim as ref

extension()  # loading the module registers its ops
_ops = torch.ops.igd_fast_C


def ssim_scale_fwd(x, y, win_size, sigma, c1, c2, want_maps):
    return _ops.ssim_scale_fwd(x, y, win_size, sigma, c1, c2, want_maps)


def ssim_scale_bwd(x, y, win_size, sigma, c1, c2, g_s_mean, g_cs_mean, g_s_map, g_cs_map, need_gx):
    return _ops.ssim_scale_bwd(x, y, win_size, sigma, c1, c2, g_s_mean, g_cs_mean, g_s_map, g_cs_map, need_gx)


def combine_maps(maps, weights, out_h, out_w, win_size):
    return _ops.combine_maps(maps, weights, out_h, out_w, win_size)


def ms_ssim_fused(x, y, win_size, sigma, c1, c2, weights, want_map):
    return _ops.ms_ssim_fused(x, y, win_size, sigma, c1, c2, weights, want_map)


# The pool between scales has a C++ kernel only; on CUDA, torch's own pool is already
# a single memory-bound launch.
def downsample(x):
    return _ops.downsample(x) if x.device.type == "cpu" else ref.downsample(x)


def downsample_bwd(grad, h, w):
    return _ops.downsample_bwd(grad, h, w) if grad.device.type == "cpu" else ref.downsample_bwd(grad, h, w)
