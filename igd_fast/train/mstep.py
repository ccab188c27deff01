"""The M-step of one model: autoencoder update, then (``igd``) critic update, in
bounded micro-batches.

``igd``: autoencoder loss l_r + l_h + lambda3 ||d(g(z_alpha))||^2; critic loss
||d(g(z_alpha)) - alpha||^2 + ||d(gamma x + (1 - gamma) x_hat)||^2, alpha ~ U(0, 0.5).
The other variants (:mod:`igd_fast.models.variants`) drop terms: the loss is always
the variant's reconstruction term + its latent term (+ the critic's for ``igd``), and
the logged ``l_r`` / ``l_h`` are those two terms (MSE for ``mse``, ||z - c||^2 for
Deep SVDD).

Micro-batches: a batch of n inputs (images, or for the local model 225 patches per
image) runs through forward/backward ``micro_batch`` inputs at a time; each chunk's
loss is weighted by its share of the batch and the gradients accumulate, so there is
one optimiser step per batch and the loss is the batch mean, as with one big forward
(up to float rounding). Two documented consequences: BatchNorm normalises with each
micro-batch's statistics, and interpolation pairs (each sample with its neighbour) are
formed within a micro-batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..models import IGD, ModelConfig
from ..models.terms import latent_term
from ..ops.ssim import recon_loss

LOSS_TERMS = ("l_r", "l_h", "l_inter", "l_d", "loss")

ReconFn = Callable[[Tensor, Tensor], Tensor]


class AutoEncoderStep(nn.Module):
    """The autoencoder part of one M-step as one module (one DDP forward): returns z,
    x_hat = g(z) (None without a decoder) and, with ``interpolate``,
    x_alpha = g(alpha z + (1 - alpha) z_rolled) (else None)."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module | None, interpolate: bool = True) -> None:
        super().__init__()
        self.encoder, self.decoder, self.interpolate = encoder, decoder, interpolate

    def forward(self, x: Tensor, alpha: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        z = self.encoder(x)
        if self.decoder is None:
            return z, None, None
        x_hat = self.decoder(z)
        if not self.interpolate:
            return z, x_hat, None
        # pair each sample with its neighbour: x1 != x2 for distinct images (paper eq. 9)
        z_mix = alpha * z + (1 - alpha) * z.roll(1, 0)
        return z, x_hat, self.decoder(z_mix)


def autoencoder_step(model: IGD) -> AutoEncoderStep:
    return AutoEncoderStep(model.encoder, model.decoder, model.critic is not None)


def default_recon_fn(cfg: ModelConfig, backend: str | None = None) -> ReconFn:
    """Batch-mean reconstruction term of the variant: l_r through the fused MS-SSIM
    kernels (igd_fast.recon_loss), or the MSE."""
    ms = cfg.msssim()
    if cfg.method.recon == "mse":
        return lambda x, x_hat: (x - x_hat).pow(2).mean()

    def fn(x: Tensor, x_hat: Tensor) -> Tensor:
        return recon_loss(x.contiguous(), x_hat.contiguous(), cfg.rho, ms, "mean", backend)

    return fn


def make_optimizers(model: IGD) -> tuple[torch.optim.Adam, torch.optim.Adam | None]:
    """Adam for encoder + decoder, and for the critic (None for variants without one)."""
    c = model.config
    ae_params = list(model.encoder.parameters())
    if model.decoder is not None:
        ae_params += list(model.decoder.parameters())
    opt_critic = None
    if model.critic is not None:
        opt_critic = torch.optim.Adam(model.critic.parameters(), lr=c.lr, weight_decay=c.weight_decay, foreach=True)
    return torch.optim.Adam(ae_params, lr=c.lr, weight_decay=c.weight_decay, foreach=True), opt_critic


def set_lr(optimizers, lr: float) -> None:
    """Set every param group's learning rate (the schedule's value for this epoch)."""
    for opt in optimizers:
        if opt is not None:
            for g in opt.param_groups:
                g["lr"] = lr


def chunks(n: int, size: int | None) -> list[tuple[int, int]]:
    """[start, stop) ranges covering 0..n in as few pieces of at most ``size`` as
    possible, balanced (16 by 11 -> 8 + 8, not 11 + 5: no tiny BatchNorm batch)."""
    if size is None or size <= 0 or size >= n:
        return [(0, n)]
    k = min(-(-n // size), n // 2)  # pieces of >= 2: interpolation pairs need two samples
    bounds = [round(i * n / k) for i in range(k + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def _no_sync(module: nn.Module, last: bool):
    """DDP: all-reduce gradients only on the last micro-batch's backward."""
    if not last and hasattr(module, "no_sync"):
        return module.no_sync()
    return contextlib.nullcontext()


class MStep:
    """One M-step (autoencoder update, then critic update) of an :class:`IGD` model.

    ``ae`` / ``critic`` may be DDP- or torch.compile-wrapped versions of the model's
    modules; ``recon_fn(x, x_hat) -> scalar`` defaults to the fused loss (the benchmark
    swaps in pytorch_msssim); ``micro_batch`` bounds the inputs per forward/backward
    (None: the whole batch). Returns the detached loss terms as a 5-vector."""

    def __init__(
        self,
        model: IGD,
        opt_ae: torch.optim.Optimizer,
        opt_critic: torch.optim.Optimizer | None,
        recon_fn: ReconFn | None = None,
        ae: nn.Module | None = None,
        critic: nn.Module | None = None,
        amp_dtype: torch.dtype | None = None,
        micro_batch: int | None = None,
    ) -> None:
        self.model, self.opt_ae, self.opt_critic = model, opt_ae, opt_critic
        self.cfg = model.config
        self.recon_fn = recon_fn or default_recon_fn(self.cfg)
        self.ae = ae if ae is not None else autoencoder_step(model)
        self.critic = critic if critic is not None else model.critic
        self.amp_dtype = amp_dtype
        self.micro_batch = micro_batch

    def _autocast(self, x: Tensor):
        return torch.autocast(x.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def _draws(self, n: int, device: torch.device, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        alpha = (torch.rand(n, 1, generator=gen) * 0.5).to(device)
        if self.cfg.gamma is None:
            gamma = torch.rand(n, 1, 1, 1, generator=gen).to(device)
        else:
            gamma = torch.full((n, 1, 1, 1), self.cfg.gamma, device=device)
        return alpha, gamma

    def _autoencoder(self, x: Tensor, alpha: Tensor, parts: list[tuple[int, int]]):
        """Accumulates the autoencoder gradient; returns (x_hat, x_alpha, 4 weighted terms)."""
        cfg, n, model = self.cfg, x.shape[0], self.model
        critic = model.critic
        if critic is not None:
            # critic weights as constants here: its gradient comes from its own loss only
            # (detached params also keep DDP's reducer of the critic out of this backward)
            frozen = {k: v.detach() for k, v in critic.named_parameters()}
            frozen.update(dict(critic.named_buffers()))
        terms = torch.zeros(4, dtype=torch.float32, device=x.device)
        zero = torch.zeros((), device=x.device)
        x_hats, x_alphas = [], []
        self.opt_ae.zero_grad(set_to_none=True)
        for i, (a, b) in enumerate(parts):
            xc, w = x[a:b], (b - a) / n
            with self._autocast(x):
                z, x_hat, x_alpha = self.ae(xc, alpha[a:b])
                d_alpha = functional_call(critic, frozen, (x_alpha,)) if critic is not None else None
            l_r = self.recon_fn(xc, x_hat.float()) if x_hat is not None else zero
            l_h = latent_term(model, z).mean() if cfg.method.latent else zero
            l_inter = d_alpha.float().pow(2).mean() if d_alpha is not None else zero
            loss = l_r + l_h + cfg.lambda3 * l_inter
            with _no_sync(self.ae, i == len(parts) - 1):
                (loss * w).backward()
            terms += w * torch.stack([l_r, l_h, l_inter, loss]).detach().float()
            if critic is not None:
                x_hats.append(x_hat.detach().to(x.dtype))
                x_alphas.append(x_alpha.detach().to(x.dtype))
        self.opt_ae.step()
        if critic is None:
            return None, None, terms
        return torch.cat(x_hats), torch.cat(x_alphas), terms

    def _critic(self, x: Tensor, x_hat: Tensor, x_alpha: Tensor, alpha: Tensor, gamma: Tensor, parts) -> Tensor:
        """Critic update on d(x_alpha) -> alpha and d(gamma x + (1-gamma) x_hat) -> 0."""
        n = x.shape[0]
        x_mix = gamma * x + (1 - gamma) * x_hat
        l_d_sum = torch.zeros((), dtype=torch.float32, device=x.device)
        self.opt_critic.zero_grad(set_to_none=True)
        for i, (a, b) in enumerate(parts):
            k, w = b - a, (b - a) / n
            with self._autocast(x):
                d = self.critic(torch.cat([x_alpha[a:b], x_mix[a:b]])).float()
            l_d = (d[:k] - alpha[a:b].view(-1)).pow(2).mean() + d[k:].pow(2).mean()
            with _no_sync(self.critic, i == len(parts) - 1):
                (l_d * w).backward()
            l_d_sum += w * l_d.detach()
        self.opt_critic.step()
        return l_d_sum

    def __call__(self, x: Tensor, gen: torch.Generator) -> Tensor:
        n = x.shape[0]
        alpha, gamma = self._draws(n, x.device, gen)
        parts = chunks(n, self.micro_batch)
        x_hat, x_alpha, (l_r, l_h, l_inter, loss) = self._autoencoder(x, alpha, parts)
        if self.model.critic is not None:
            l_d = self._critic(x, x_hat, x_alpha, alpha, gamma, parts)
        else:
            l_d = torch.zeros((), device=x.device)
        return torch.stack([l_r, l_h, l_inter, l_d, loss]).detach().float()
