"""Encoder (ResNet-18 style), decoder (its reverse) and critic.

The encoder's trunk uses torchvision's parameter names (conv1, bn1, layer1..layer4 with
BasicBlocks and ``downsample``), so a torchvision ResNet-18 ``state_dict`` loads into it
directly when ``width=64, blocks=(2, 2, 2, 2)``; torchvision itself is never imported.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _bn(c: int, affine: bool = True) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, affine=affine)


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: two 3×3 convs with a (possibly strided) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1, affine: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = _bn(cout, affine)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = _bn(cout, affine)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _bn(cout, affine))

    def forward(self, x: Tensor) -> Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + idt)


class UpBlock(nn.Module):
    """Reverse BasicBlock: nearest 2× upsampling (if ``up``) then two 3×3 convs; the
    shortcut is upsampled and projected. Nearest + conv avoids checkerboard artefacts."""

    def __init__(self, cin: int, cout: int, up: bool) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="nearest") if up else nn.Identity()
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
        self.bn1 = _bn(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = _bn(cout)
        self.shortcut: nn.Module = nn.Identity()
        if cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), _bn(cout))

    def forward(self, x: Tensor) -> Tensor:
        x = self.up(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def _stage(block, cin: int, cout: int, n: int, stride: int, **kw) -> nn.Sequential:
    layers = [block(cin, cout, stride, **kw)] + [block(cout, cout, 1, **kw) for _ in range(n - 1)]
    return nn.Sequential(*layers)


class ResNetTrunk(nn.Module):
    """ResNet-18 trunk (stem + 4 stages + global average pool): N×3×S×S -> N×8·width.
    ``bias_free``: BatchNorm without affine parameters (Deep SVDD's requirement)."""

    def __init__(
        self, width: int = 64, blocks: tuple[int, ...] = (2, 2, 2, 2), in_channels: int = 3, bias_free: bool = False
    ) -> None:
        super().__init__()
        w, aff = width, not bias_free
        self.conv1 = nn.Conv2d(in_channels, w, 7, 2, 3, bias=False)
        self.bn1 = _bn(w, aff)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = _stage(BasicBlock, w, w, blocks[0], 1, affine=aff)
        self.layer2 = _stage(BasicBlock, w, 2 * w, blocks[1], 2, affine=aff)
        self.layer3 = _stage(BasicBlock, 2 * w, 4 * w, blocks[2], 2, affine=aff)
        self.layer4 = _stage(BasicBlock, 4 * w, 8 * w, blocks[3], 2, affine=aff)
        self.out_features = 8 * w
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def features(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x).mean(dim=(2, 3))


class Encoder(ResNetTrunk):
    """f: image -> latent z (N×latent): ResNet-18 trunk + linear projection ``proj``
    (bias-free with ``bias_free``, as Deep SVDD requires)."""

    def __init__(
        self, latent: int = 128, width: int = 64, blocks: tuple[int, ...] = (2, 2, 2, 2), bias_free: bool = False
    ) -> None:
        super().__init__(width, blocks, bias_free=bias_free)
        self.proj = nn.Linear(self.out_features, latent, bias=not bias_free)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(super().forward(x))


class Decoder(nn.Module):
    """g: latent -> image, the encoder reversed: linear to 8w×(S/32)², four UpBlock
    stages (8w→4w→2w→w→w, each 2×) and a 2× upsample + 3×3 conv to 3 channels.
    No output squashing: targets are ImageNet-normalised, not in [0, 1]."""

    def __init__(
        self, latent: int = 128, width: int = 64, blocks: tuple[int, ...] = (2, 2, 2, 2), out_size: int = 256
    ) -> None:
        super().__init__()
        w = width
        self.s0 = out_size // 32
        self.fc = nn.Linear(latent, 8 * w * self.s0 * self.s0)
        self.c0 = 8 * w
        chans = [8 * w, 4 * w, 2 * w, w, w]
        self.layers = nn.Sequential(
            *[
                nn.Sequential(
                    UpBlock(chans[i], chans[i + 1], True),
                    *[UpBlock(chans[i + 1], chans[i + 1], False) for _ in range(blocks[3 - i] - 1)],
                )
                for i in range(4)
            ]
        )
        self.head = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(w, 3, 3, 1, 1))

    def forward(self, z: Tensor) -> Tensor:
        x = self.fc(z).view(z.shape[0], self.c0, self.s0, self.s0)
        return self.head(self.layers(x))


class Critic(nn.Module):
    """d: image -> predicted interpolation coefficient α (N), a small ResNet trunk."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.trunk = ResNetTrunk(width, (1, 1, 1, 1))
        self.head = nn.Linear(self.trunk.out_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.trunk(x)).squeeze(1)


def trunk_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The conv1/bn1/layer1..4 entries of a torchvision ResNet state_dict."""
    keep = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")
    return {k: v for k, v in sd.items() if k.startswith(keep)}
