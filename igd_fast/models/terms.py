"""The per-sample terms of a model's variant, in one place for training (their batch
mean is the loss), validation and scoring (their sum is the anomaly score).

Reconstruction: l_r through the fused MS-SSIM kernels, or the MSE; latent: l_h, the
Deep SVDD distance, or nothing (see :mod:`.variants` for the table).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..ops.patches import patch_scores
from ..ops.ssim import recon_loss
from .igd import IGD


def recon_term(model: IGD, x: Tensor, x_hat: Tensor | None, backend: str | None = None) -> Tensor:
    """Per-sample reconstruction term (N, float32); zeros for a variant without one."""
    cfg, kind = model.config, model.config.method.recon
    if kind == "msssim":
        return recon_loss(x.contiguous(), x_hat.float().contiguous(), cfg.rho, cfg.msssim(), "none", backend)
    if kind == "mse":
        return (x.float() - x_hat.float()).pow(2).mean((1, 2, 3))
    return torch.zeros(x.shape[0], device=x.device)


def recon_mean(model: IGD, x: Tensor, x_hat: Tensor | None, backend: str | None = None) -> Tensor:
    """Batch mean of :func:`recon_term` (the loss; the fused kernels' mean reduction)."""
    cfg, kind = model.config, model.config.method.recon
    if kind == "msssim":
        return recon_loss(x.contiguous(), x_hat.float().contiguous(), cfg.rho, cfg.msssim(), "mean", backend)
    return recon_term(model, x, x_hat, backend).mean()


def latent_term(model: IGD, z: Tensor) -> Tensor:
    """Per-sample latent term (N, float32): l_h, ||z - c||^2 or zeros."""
    kind = model.config.method.latent
    if kind == "gac":
        return model.descriptor.l_h(z)
    if kind == "svdd":
        return model.descriptor.dist2(z)
    return torch.zeros(z.shape[0], device=z.device)


def sample_scores(
    model: IGD, x: Tensor, want_map: bool, backend: str | None = None, memory_format=torch.contiguous_format
) -> tuple[Tensor, Tensor | None]:
    """(score N, per-pixel map N×1×H×W or None) of contiguous NCHW inputs ``x``; the
    networks see ``x`` in ``memory_format``. The map is None for a variant without a
    decoder (Deep SVDD)."""
    z, x_hat = model(x.contiguous(memory_format=memory_format))
    extra = latent_term(model, z)
    kind = model.config.method.recon
    if kind == "msssim":
        # l_r and its per-pixel map in one pass of the MS-SSIM kernels, the latent term added
        cfg = model.config
        return patch_scores(x, x_hat.contiguous(), cfg.msssim(), cfg.rho, extra, want_map, backend)
    if kind == "mse":
        err = (x.float() - x_hat.float()).pow(2)
        return err.mean((1, 2, 3)) + extra, (err.mean(1, keepdim=True) if want_map else None)
    return extra, None
