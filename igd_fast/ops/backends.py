"""Backend name -> the implementation of every op of a family: one table per family.

Each row names, for one backend, the function behind each entry point of the contract in
ARCHITECTURE.md. Optional entry points are listed explicitly: a backend without its own
kernel names the reference (``downsample`` on CUDA and Triton) or ``None``
(``ms_ssim_fused`` outside the CPU). The compiled backends point straight at
``torch.ops.igd_fast_C``; Triton and the extension import lazily, so a missing Triton or
extension never breaks ``import igd_fast``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch

from .. import _backends
from ..reference import patches as ref_patches
from ..reference import ssim as ref_ssim

Fn = Callable[..., Any]


@dataclass(frozen=True)
class SsimKernels:
    """The SSIM-family entry points of one backend."""

    ssim_scale: Fn
    ssim_scale_backward: Fn
    combine_maps: Fn
    downsample: Fn
    downsample_backward: Fn
    ms_ssim_fused: Fn | None  # optional: inference in one op (CPU kernel, reference composition)


@dataclass(frozen=True)
class PatchKernels:
    """The patch-family entry points of one backend."""

    fold_patch_maps: Fn
    anomaly_map: Fn


def _compiled() -> Any:
    _backends.extension()  # loading the module registers its ops
    return torch.ops.igd_fast_C


def _ssim_torch() -> SsimKernels:
    r = ref_ssim
    return SsimKernels(
        r.ssim_scale, r.ssim_scale_backward, r.combine_maps, r.downsample, r.downsample_backward, r.ms_ssim_fused
    )


def _ssim_cpu() -> SsimKernels:
    c = _compiled()
    return SsimKernels(
        c.ssim_scale, c.ssim_scale_backward, c.combine_maps, c.downsample, c.downsample_backward, c.ms_ssim_fused
    )


def _ssim_cuda() -> SsimKernels:
    # The pool has a C++ kernel only: on CUDA, torch's own pool is already one
    # memory-bound launch. No fused inference op on CUDA.
    c = _compiled()
    r = ref_ssim
    return SsimKernels(c.ssim_scale, c.ssim_scale_backward, c.combine_maps, r.downsample, r.downsample_backward, None)


def _ssim_triton() -> SsimKernels:
    from igd_fast.kernels import ssim as t

    r = ref_ssim
    return SsimKernels(t.ssim_scale, t.ssim_scale_backward, t.combine_maps, r.downsample, r.downsample_backward, None)


def _patches_torch() -> PatchKernels:
    return PatchKernels(ref_patches.fold_patch_maps, ref_patches.anomaly_map)


def _patches_compiled() -> PatchKernels:
    c = _compiled()
    return PatchKernels(c.fold_patch_maps, c.anomaly_map)


def _patches_triton() -> PatchKernels:
    from igd_fast.kernels import patches as t

    return PatchKernels(t.fold_patch_maps, t.anomaly_map)


SSIM: dict[str, Callable[[], SsimKernels]] = {
    "torch": _ssim_torch,
    "cpu": _ssim_cpu,
    "cuda": _ssim_cuda,
    "triton": _ssim_triton,
}

PATCHES: dict[str, Callable[[], PatchKernels]] = {
    "torch": _patches_torch,
    "cpu": _patches_compiled,
    "cuda": _patches_compiled,
    "triton": _patches_triton,
}


@cache
def ssim_kernels(backend: str) -> SsimKernels:
    """The SSIM entry points of ``backend`` (one of :data:`igd_fast._backends.NAMES`)."""
    return SSIM[backend]()


@cache
def patch_kernels(backend: str) -> PatchKernels:
    """The patch entry points of ``backend``."""
    return PATCHES[backend]()
