"""Input checks shared by every public op: clear ValueErrors before any kernel runs."""

from __future__ import annotations

import os

import torch

from .config import MSSSIMConfig

# IGD_FAST_CHECK_FINITE=1 turns the NaN/inf scan on for every call.
_CHECK_FINITE_DEFAULT = os.environ.get("IGD_FAST_CHECK_FINITE", "0") not in ("", "0")


def check_image_pair(
    x: torch.Tensor,
    y: torch.Tensor,
    config: MSSSIMConfig,
    *,
    check_finite: bool | None = None,
    what: str = "x and y",
) -> None:
    """Validate two N×C×H×W images for MS-SSIM under ``config``."""
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(
                f"{name} must be a 4-D N×C×H×W tensor, got {t.dim()}-D shape {tuple(t.shape)}"
            )
        if not t.dtype.is_floating_point:
            raise ValueError(f"{name} must have a floating dtype, got {t.dtype}")
    if x.shape != y.shape:
        raise ValueError(f"{what} must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.device != y.device:
        raise ValueError(f"{what} must be on the same device, got {x.device} and {y.device}")
    if x.dtype != y.dtype:
        raise ValueError(f"{what} must have the same dtype, got {x.dtype} and {y.dtype}")
    if x.numel() == 0:
        raise ValueError(f"{what} are empty: shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if min(h, w) < config.min_size:
        raise ValueError(
            f"image of {h}×{w} is too small for {config.scales} scales with a "
            f"{config.win_size}×{config.win_size} window: H and W must be at least "
            f"{config.min_size}"
        )
    if check_finite is None:
        check_finite = _CHECK_FINITE_DEFAULT
    if check_finite:
        for name, t in (("x", x), ("y", y)):
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"{name} contains NaN or inf values")
