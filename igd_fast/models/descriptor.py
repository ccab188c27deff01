"""The Gaussian anomaly classifier p(y=0|z) = exp(-||z - mu||^2 / sigma^2) (and the
Deep SVDD distance ||z - c||^2 to the same centre buffer)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class GaussianDescriptor(nn.Module):
    """Holds mu (latent) and sigma2 (scalar) as buffers, set by the E-step."""

    mu: Tensor
    sigma2: Tensor

    def __init__(self, latent: int = 128) -> None:
        super().__init__()
        self.register_buffer("mu", torch.zeros(latent))
        self.register_buffer("sigma2", torch.ones(()))

    @property
    def sigma(self) -> Tensor:
        return self.sigma2.sqrt()

    @torch.no_grad()
    def set(self, mu: Tensor, sigma2: Tensor | float) -> None:
        self.mu.copy_(mu)
        self.sigma2.fill_(float(sigma2))

    def dist2(self, z: Tensor) -> Tensor:
        """Per-sample ||z - mu||^2 (N), in float32 (Deep SVDD's score with mu = c)."""
        return (z.float() - self.mu).pow(2).sum(1)

    def l_h(self, z: Tensor) -> Tensor:
        """Per-sample 1 - p(y=0|z) (N), in float32."""
        return 1.0 - torch.exp(-self.dist2(z) / self.sigma2.clamp_min(1e-12))
