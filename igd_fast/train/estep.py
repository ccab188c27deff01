"""What the model sees (images or patches), the E-step of the Gaussian descriptor, the
BatchNorm calibration before it, and the validation loss.

E-step: mu = mean f(x), sigma^2 = mean ||f(x) - mu||^2 over the training normals (eval
mode, no gradient); under torch.distributed the sums of z, of the counts and then of
||z - mu||^2 are all-reduced, so N processes give the single-process values. Every pass
here runs the networks ``chunk`` inputs at a time, so memory stays bounded however
many patches a batch of images holds.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from .. import _dist
from ..models import IGD, ModelConfig
from ..models.terms import latent_term, recon_term
from ..models.variants import SVDD_EPS
from ..ops.patches import extract_patches


def model_inputs(
    images: Tensor, cfg: ModelConfig, gen: torch.Generator | None = None, per_image: int | None = None
) -> Tensor:
    """What the model sees: the images (global) or their patches (local), optionally a
    random ``per_image`` subset of each image's patches."""
    if cfg.kind == "global":
        return images
    patches, grid = extract_patches(images, cfg.patch_size, cfg.patch_stride)
    if per_image is None or per_image >= grid.count:
        return patches
    n = images.shape[0]
    sel = torch.stack([torch.randperm(grid.count, generator=gen)[:per_image] for _ in range(n)])
    idx = (sel + torch.arange(n)[:, None] * grid.count).reshape(-1).to(images.device)
    return patches[idx]


def _batches(loader: DataLoader, cfg: ModelConfig, device: torch.device, chunk: int | None, channels_last: bool):
    """Model inputs of every batch of ``loader``, ``chunk`` at a time."""
    for batch in loader:
        x = model_inputs(batch["image"].to(device, non_blocking=True), cfg)
        for part in x.split(chunk or x.shape[0]):
            yield part.contiguous(memory_format=torch.channels_last) if channels_last else part


@torch.no_grad()
def estimate_descriptor(
    model: IGD, loader: DataLoader, device: torch.device, channels_last: bool = False, chunk: int | None = None
) -> tuple[Tensor, Tensor, int]:
    """E-step over ``loader`` (this rank's shard): sets and returns (mu, sigma2, count)."""
    was_training = model.training
    model.eval()
    cfg = model.config
    zs = [model.encoder(x).double() for x in _batches(loader, cfg, device, chunk, channels_last)]
    z = torch.cat(zs) if zs else torch.zeros(0, cfg.latent, dtype=torch.float64, device=device)
    stats = torch.cat([z.sum(0), torch.tensor([float(z.shape[0])], dtype=torch.float64, device=device)])
    _dist.all_sum(stats)
    count = int(stats[-1].item())
    if count == 0:
        raise ValueError("E-step: no training samples")
    mu = stats[:-1] / count
    if cfg.method.latent == "svdd":
        # Deep SVDD: a centre coordinate near 0 is trivially matched by zero weights
        mu = torch.where(mu.abs() < SVDD_EPS, torch.where(mu < 0, -SVDD_EPS, SVDD_EPS), mu)
    sq = _dist.all_sum((z - mu).pow(2).sum().reshape(1))
    sigma2 = (sq / count).clamp_min(cfg.sigma2_floor)
    model.descriptor.set(mu.float(), float(sigma2))
    model.train(was_training)
    return model.descriptor.mu.clone(), model.descriptor.sigma2.clone(), count


@torch.no_grad()
def calibrate_batchnorm(
    model: IGD, loader: DataLoader, device: torch.device, channels_last: bool = False, chunk: int | None = None
) -> None:
    """Set every BatchNorm's running stats to the average of its batch statistics over
    ``loader`` (train-mode forward, no gradient). Run once before the first E-step: the
    E-step and scoring use eval mode, and the initial running stats (0, 1) would give
    latents far from the train-mode ones the M-step sees (l_h stuck at 1, no gradient).
    Every rank passes over the same full loader, so all ranks (and 1 process) agree."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the pass
    was_training = model.training
    model.train()
    for x in _batches(loader, model.config, device, chunk, channels_last):
        z, x_hat = model(x)
        if model.critic is not None:
            model.critic(x_hat)
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    model.train(was_training)


@torch.no_grad()
def validation_loss(
    model: IGD, loader: DataLoader, device: torch.device, backend: str | None = None, chunk: int | None = None
) -> dict[str, float]:
    """Mean reconstruction and latent terms of the variant (``val_l_r``, ``val_l_h``) and
    their sum, the mean validation score (``val_loss``), over this rank's validation
    shard, all-reduced."""
    was_training = model.training
    model.eval()
    cfg = model.config
    acc = torch.zeros(3, dtype=torch.float64, device=device)
    for x in _batches(loader, cfg, device, chunk, False):
        z, x_hat = model(x)
        lr = recon_term(model, x, x_hat, backend)
        lh = latent_term(model, z)
        acc += torch.stack([lr.sum(), lh.sum(), torch.tensor(float(x.shape[0]), device=device)]).double()
    _dist.all_sum(acc)
    model.train(was_training)
    if acc[2] == 0:
        return {}
    lr, lh = float(acc[0] / acc[2]), float(acc[1] / acc[2])
    return {"val_l_r": lr, "val_l_h": lh, "val_loss": lr + lh}
