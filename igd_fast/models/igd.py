"""IGD: encoder f, decoder g, critic d and the Gaussian descriptor of one model.

Which parts exist follows the config's variant (:mod:`.variants`): Deep SVDD has no
decoder, only ``igd`` has a critic.
"""

from __future__ import annotations

from torch import Tensor, nn

from .config import ModelConfig
from .descriptor import GaussianDescriptor
from .nets import Critic, Decoder, Encoder


class IGD(nn.Module):
    """One model (global or local). ``forward(x) -> (z, x_hat)`` (``x_hat`` None without
    a decoder); inputs are N×3×S×S ImageNet-normalised images (global) or patches
    (local), S = input_size."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c, v = config, config.method
        self.encoder = Encoder(c.latent, c.width, c.blocks, bias_free=v.bias_free)
        self.decoder = Decoder(c.latent, c.width, c.blocks, c.input_size) if v.decoder else None
        self.critic = Critic(c.critic_width) if v.critic else None
        self.descriptor = GaussianDescriptor(c.latent)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        z = self.encoder(x)
        return z, (self.decoder(z) if self.decoder is not None else None)
