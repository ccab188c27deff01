"""The defect model: a reconstruction network and a segmentation network trained together
on synthetic defects (:mod:`igd_fast.data.defects`), after DRAEM (Zavrtanik et al., ICCV
2021), small enough to train on two CPU cores.

* ``recon`` (an autoencoder with a spatial bottleneck, no skips) learns to give back the
  normal image from one with a synthetic defect drawn in: it repairs what does not belong.
* ``seg`` (a U-Net) sees the input and that repair side by side and outputs a per-pixel
  logit of "defect here".

Both are fully convolutional: they run on the whole image at its working size, any aspect
ratio (the input is padded to a multiple of 2^depth by edge replication, outputs cropped
back). The per-pixel outputs are the logit and the repair residual mean_c |x - x_rec|
(:func:`pixel_maps`); how they become a map and an image score is the scorer's part
(:class:`igd_fast.score.components.DefectPart`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class DefectConfig:
    """Architecture and training settings of one defect model.

    ``image_size``: the working size, the longer image side in pixels (aspect kept).
    ``width`` / ``depth``: the U-Net's first-level channels and pooling levels;
    ``recon_width`` / ``recon_depth``: the same for the reconstruction network.
    ``steps`` optimiser steps of ``batch_size`` images, Adam at ``lr`` on a cosine schedule;
    ``crop``: training crop side (0 = the whole working-size image, which keeps the
    object's layout in view); ``defect_chance``: share of training images given a defect.
    """

    kind: str = "defect"
    image_size: int = 224
    width: int = 16
    depth: int = 4
    recon_width: int = 16
    recon_depth: int = 3
    steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-3
    crop: int = 0
    defect_chance: float = 0.5

    def __post_init__(self) -> None:
        if self.kind != "defect":
            raise ValueError(f"a DefectConfig's kind is 'defect', got {self.kind!r}")
        for name in ("image_size", "width", "depth", "recon_width", "recon_depth", "steps", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if self.image_size < 2**self.depth or self.image_size < 2**self.recon_depth:
            raise ValueError(f"image_size {self.image_size} is too small for depth {self.depth} / recon_depth "
                             f"{self.recon_depth}")  # fmt: skip
        if not isinstance(self.crop, int) or self.crop < 0:
            raise ValueError(f"crop must be an integer >= 0, got {self.crop!r}")
        if not (0 < self.lr < 1):
            raise ValueError(f"lr must be in (0, 1), got {self.lr!r}")
        if not (0 < self.defect_chance <= 1):
            raise ValueError(f"defect_chance must be in (0, 1], got {self.defect_chance!r}")

    @property
    def multiple(self) -> int:
        """Inputs are padded to a multiple of this (both networks' pooling)."""
        return 2 ** max(self.depth, self.recon_depth)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DefectConfig:
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown DefectConfig fields {sorted(unknown)}")
        return cls(**d)


def _cbr(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ReconNet(nn.Module):
    """Autoencoder with a spatial bottleneck (``depth`` 2× poolings, channels doubling), no
    skip connections, so it cannot copy a defect through."""

    def __init__(self, width: int = 16, depth: int = 3) -> None:
        super().__init__()
        ch = [width * 2**i for i in range(depth + 1)]
        enc: list[nn.Module] = [_cbr(3, ch[0])]
        for i in range(depth):
            enc += [nn.MaxPool2d(2), _cbr(ch[i], ch[i + 1]), _cbr(ch[i + 1], ch[i + 1])]
        dec: list[nn.Module] = []
        for i in reversed(range(depth)):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), _cbr(ch[i + 1], ch[i]), _cbr(ch[i], ch[i])]
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec, nn.Conv2d(ch[0], 3, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))


class SegNet(nn.Module):
    """U-Net: ``depth`` pooling levels, skip connections, one logit channel out."""

    def __init__(self, in_channels: int = 6, width: int = 16, depth: int = 4) -> None:
        super().__init__()
        ch = [width * 2**i for i in range(depth + 1)]
        self.stem = nn.Sequential(_cbr(in_channels, ch[0]), _cbr(ch[0], ch[0]))
        self.down = nn.ModuleList(nn.Sequential(nn.MaxPool2d(2), _cbr(ch[i], ch[i + 1]), _cbr(ch[i + 1], ch[i + 1]))
                                  for i in range(depth))  # fmt: skip
        self.up = nn.ModuleList(nn.Sequential(_cbr(ch[i + 1] + ch[i], ch[i]), _cbr(ch[i], ch[i]))
                                for i in reversed(range(depth)))  # fmt: skip
        self.head = nn.Conv2d(ch[0], 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        skips = [self.stem(x)]
        for d in self.down:
            skips.append(d(skips[-1]))
        y = skips.pop()
        for u in self.up:
            s = skips.pop()
            y = u(torch.cat([F.interpolate(y, size=s.shape[-2:], mode="nearest"), s], 1))
        return self.head(y)


class DefectModel(nn.Module):
    """``forward(x) -> (logit N×1×H×W, repair N×3×H×W)`` for ImageNet-normalised N×3×H×W
    images of any size (padded to :attr:`DefectConfig.multiple` inside, cropped back)."""

    def __init__(self, config: DefectConfig) -> None:
        super().__init__()
        self.config = config
        self.recon = ReconNet(config.recon_width, config.recon_depth)
        self.seg = SegNet(6, config.width, config.depth)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h, w = x.shape[-2:]
        k = self.config.multiple
        ph, pw = (-h) % k, (-w) % k
        xp = F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x
        rep = self.recon(xp)
        logit = self.seg(torch.cat([xp, rep.to(xp.dtype)], 1))
        return logit[..., :h, :w], rep[..., :h, :w]


# test-time flips: identity, left-right, up-down, both. Averaged they give the image term
# +0.01 to +0.04 image AUROC over the identity alone (mvtec_bottle, moon_grey, seed 0); the
# map takes the identity pass alone, since the averaged map blurs what one view sees
# (docs/results/mvtec_bottle.md, "test-time flips").
TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (3,), (2,), (2, 3))


def flip_passes(model: DefectModel, x: Tensor) -> tuple[Tensor, Tensor]:
    """(logit, residual), each N×F×H×W: one channel per flip of :data:`TTA_FLIPS` (the first,
    the image as it is), each flipped back into place; the segmentation logit and the repair
    residual mean_c |x - repair| of ImageNet-normalised images ``x``."""
    logits, resids = [], []
    for dims in TTA_FLIPS:
        xf = x.flip(dims) if dims else x
        lo, rep = model(xf)
        r = (xf.float() - rep.float()).abs().mean(1, keepdim=True)
        logits.append(lo.float().flip(dims) if dims else lo.float())
        resids.append(r.flip(dims) if dims else r)
    return torch.cat(logits, 1), torch.cat(resids, 1)


def pixel_maps(model: DefectModel, x: Tensor) -> tuple[Tensor, Tensor]:
    """(logit, residual) of :func:`flip_passes`, each N×1×H×W, averaged over the flips."""
    logit, resid = flip_passes(model, x)
    return logit.mean(1, keepdim=True), resid.mean(1, keepdim=True)


# what a trained defect model's scoring standardises with (fitted on validation normals)
NORMALISER_KEYS = ("logit_mean", "logit_std", "resid_mean", "resid_std", "resid_weight", "resid_auroc")


def residual_weight(auroc: float) -> float:
    """The repair residual's weight in the map, from its pixel AUROC on synthetic defects drawn
    on validation normals: 0 at <= 0.6 (the residual sees nothing there, e.g. grass, where its
    pixel AUROC was 0.57), 1 at >= 0.8 (bottle 0.93, moon 0.87), linear between."""
    return min(1.0, max(0.0, (auroc - 0.6) / 0.2))
