"""Patch entry points of the compiled backends (torch.ops.igd_fast_C.*)."""

from __future__ import annotations

import torch

from ..._backends import extension

extension()  # loading the module registers its ops
_ops = torch.ops.igd_fast_C


def fold_patch_maps(patch_maps, height, width, size, stride, mode):
    return _ops.fold_patch_maps(patch_maps, height, width, size, stride, mode)


def anomaly_map(scores, height, width, size, stride):
    return _ops.anomaly_map(scores, height, width, size, stride)
