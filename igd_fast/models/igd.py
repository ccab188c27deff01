"""IGD: encoder f, decoder g, critic d and the Gaussian descriptor of one model."""

from __future__ import annotations

from torch import Tensor, nn

from .config import ModelConfig
from .descriptor import GaussianDescriptor
from .nets import Critic, Decoder, Encoder


class IGD(nn.Module):
    """One IGD model (global or local). ``forward(x) -> (z, x_hat)``; inputs are
    N×3×S×S ImageNet-normalised images (global) or patches (local), S = input_size."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.encoder = Encoder(c.latent, c.width, c.blocks)
        self.decoder = Decoder(c.latent, c.width, c.blocks, c.input_size)
        self.critic = Critic(c.critic_width)
        self.descriptor = GaussianDescriptor(c.latent)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = self.encoder(x)
        return z, self.decoder(z)
