"""Self-supervised (SimCLR-style) encoder pre-training: the pure parts.

* :func:`nt_xent`: the normalised temperature-scaled cross-entropy of SimCLR over the
  2N views of a batch (each view's positive is its partner, the other 2N - 2 are
  negatives).
* :func:`augment`: per-sample random resized crop, horizontal / vertical flips and
  colour jitter (brightness, contrast, saturation, hue) plus random grayscale, in torch
  ops only, every draw from one ``torch.Generator`` (same seed, same views).
* :class:`ProjectionHead`: the small MLP on the encoder output that the loss sees;
  dropped after pre-training (only the encoder is saved).
* The encoder file format (``SSL_FORMAT``) and the architecture record it carries.

The loop that trains with these is :mod:`igd_fast.train.pretrain`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ModelConfig

SSL_FORMAT = "igd_fast.ssl_encoder/1"
# what must match between the pre-trained encoder and the model it initialises
ARCH_KEYS = ("width", "blocks", "latent", "bias_free")


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.5) -> Tensor:
    """SimCLR's NT-Xent loss of N positive pairs (``z1[i]``, ``z2[i]``), N×D each:
    the mean over all 2N views of the cross-entropy that picks the partner among the
    other 2N - 1 views by cosine similarity / ``temperature``."""
    if z1.shape != z2.shape or z1.dim() != 2 or z1.shape[0] < 1:
        raise ValueError(f"nt_xent needs two N×D tensors of the same shape, got {tuple(z1.shape)}, {tuple(z2.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    sim = z @ z.T / temperature
    # a view is never its own candidate
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(sim, partner)


@dataclass(frozen=True)
class AugmentConfig:
    """SimCLR's augmentations at the usual ImageNet strengths (colour jitter s = 0.5).
    The crop keeps at least ``min_scale`` of the area: 0.2 rather than SimCLR's 0.08,
    because the local model's inputs are already 32² patches (8 % would be 9×9 pixels)."""

    min_scale: float = 0.2
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    vflip: float = 0.5  # textures and top-down inspection images have no "up"
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    gray_p: float = 0.2

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def _uniform(n: int, low: float, high: float, gen: torch.Generator | None) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=gen)


def _crop_flip_theta(n: int, cfg: AugmentConfig, gen: torch.Generator | None) -> Tensor:
    """N×2×3 affine maps (normalised coordinates) of a random resized crop with flips:
    area fraction ~ U(min_scale, 1), log aspect ratio uniform; a side that would exceed
    the image is clipped to it (torchvision retries instead: same range, simpler)."""
    area = _uniform(n, cfg.min_scale, 1.0, gen)
    logr = _uniform(n, math.log(cfg.ratio[0]), math.log(cfg.ratio[1]), gen)
    w = (area * logr.exp()).sqrt().clamp(max=1.0)
    h = (area / logr.exp()).sqrt().clamp(max=1.0)
    tx = (2 * torch.rand(n, generator=gen) - 1) * (1 - w)
    ty = (2 * torch.rand(n, generator=gen) - 1) * (1 - h)
    sx = torch.where(torch.rand(n, generator=gen) < cfg.hflip, -w, w)
    sy = torch.where(torch.rand(n, generator=gen) < cfg.vflip, -h, h)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, tx, sy, ty
    return theta


def _gray(x: Tensor) -> Tensor:
    """N×1×H×W luma (ITU-R 601, as torchvision's rgb_to_grayscale)."""
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).clamp(0, 1)


# RGB <-> YIQ: a hue shift is a rotation of the (I, Q) chroma plane
_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _hue_matrices(angles: Tensor) -> Tensor:
    c, s = angles.cos(), angles.sin()
    rot = torch.zeros(angles.shape[0], 3, 3)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = c, -s, s, c
    return torch.linalg.inv(_YIQ) @ rot @ _YIQ


def _colour(x: Tensor, cfg: AugmentConfig, gen: torch.Generator | None) -> Tensor:
    """Colour jitter (probability ``jitter_p``, fixed order brightness, contrast,
    saturation, hue; torchvision shuffles the order) then grayscale (``gray_p``), on
    images in [0, 1]."""
    n, dev = x.shape[0], x.device

    def per_sample(v: Tensor) -> Tensor:
        return v.to(dev, x.dtype).view(n, 1, 1, 1)

    on = per_sample(torch.rand(n, generator=gen) < cfg.jitter_p)
    b = per_sample(_uniform(n, 1 - cfg.brightness, 1 + cfg.brightness, gen))
    c = per_sample(_uniform(n, 1 - cfg.contrast, 1 + cfg.contrast, gen))
    s = per_sample(_uniform(n, 1 - cfg.saturation, 1 + cfg.saturation, gen))
    hue = _hue_matrices(_uniform(n, -cfg.hue, cfg.hue, gen) * 2 * math.pi).to(dev, x.dtype)
    gray_on = per_sample(torch.rand(n, generator=gen) < cfg.gray_p)
    y = (x * b).clamp(0, 1)
    y = (c * y + (1 - c) * _gray(y).mean(dim=(2, 3), keepdim=True)).clamp(0, 1)
    y = (s * y + (1 - s) * _gray(y)).clamp(0, 1)
    y = torch.einsum("nij,njhw->nihw", hue, y).clamp(0, 1)
    y = on * y + (1 - on) * x
    return gray_on * _gray(y).expand_as(y) + (1 - gray_on) * y


def augment(
    x: Tensor,
    gen: torch.Generator | None = None,
    mean: tuple[float, ...] = (0.0, 0.0, 0.0),
    std: tuple[float, ...] = (1.0, 1.0, 1.0),
    cfg: AugmentConfig | None = None,
) -> Tensor:
    """One random view of each image of ``x`` (N×3×H×W, normalised with ``mean`` /
    ``std``; the colour ops work on the de-normalised [0, 1] pixels): random resized
    crop back to H×W with flips, then colour jitter and grayscale. Same shape and dtype
    as ``x``; every random draw comes from ``gen`` (CPU), so a seed fixes the views."""
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"augment expects N×3×H×W images, got {tuple(x.shape)}")
    cfg = cfg or AugmentConfig()
    n, dev, dt = x.shape[0], x.device, x.dtype
    theta = _crop_flip_theta(n, cfg, gen).to(dev, torch.float32)
    grid = F.affine_grid(theta, [n, 3, x.shape[2], x.shape[3]], align_corners=False)
    v = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    m = torch.tensor(mean, device=dev).view(1, 3, 1, 1)
    s = torch.tensor(std, device=dev).view(1, 3, 1, 1)
    v = _colour((v * s + m).clamp(0, 1), cfg, gen)
    return ((v - m) / s).to(dt)


class ProjectionHead(nn.Module):
    """SimCLR's projection g(h): Linear - ReLU - Linear on the encoder output (the
    latent z); the contrastive loss is computed on its output, the head is then dropped."""

    def __init__(self, latent: int, hidden: int | None = None, out: int | None = None) -> None:
        super().__init__()
        hidden, out = hidden or latent, out or latent
        self.net = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out))

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


def encoder_arch(cfg: ModelConfig) -> dict:
    """The architecture record of ``cfg``'s encoder, as the SSL file stores it."""
    return {"kind": cfg.kind, "input_size": cfg.input_size, "width": cfg.width, "blocks": list(cfg.blocks),
            "latent": cfg.latent, "bias_free": cfg.method.bias_free}  # fmt: skip


def arch_mismatches(stored: dict, cfg: ModelConfig) -> list[str]:
    """The :data:`ARCH_KEYS` where a stored encoder differs from ``cfg``'s, as
    'NAME X in the file, Y here' phrases (empty: the weights fit)."""
    want = encoder_arch(cfg)
    return [f"{k} {stored.get(k)!r} in the file, {want[k]!r} here" for k in ARCH_KEYS if stored.get(k) != want[k]]
