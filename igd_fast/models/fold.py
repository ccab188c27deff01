"""BatchNorm folded into the preceding convolution, for inference.

In eval mode BN(conv(x)) = gamma (W*x - mean) / sqrt(var + eps) + beta is one
convolution with weight W·gamma/sqrt(var + eps) and bias beta - mean·gamma/sqrt(var + eps):
the same function up to float rounding, one pass over the activations fewer per layer.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

# (conv, batchnorm) attribute pairs of the blocks in .nets
_PAIRS = (("conv1", "bn1"), ("conv2", "bn2"))


@torch.no_grad()
def _fold_pair(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    fused = copy.deepcopy(conv)
    fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    bias = shift if conv.bias is None else conv.bias * scale + shift
    fused.bias = nn.Parameter(bias.to(conv.weight.dtype))
    return fused


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every BatchNorm2d that directly follows a
    Conv2d (``convN``/``bnN`` attributes, or adjacent in an ``nn.Sequential``) folded
    into it and replaced by Identity. ``model`` itself is left unchanged."""
    out = copy.deepcopy(model).eval()
    for module in out.modules():
        for c, b in _PAIRS:
            conv, bn = getattr(module, c, None), getattr(module, b, None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(module, c, _fold_pair(conv, bn))
                setattr(module, b, nn.Identity())
        if isinstance(module, nn.Sequential):
            for i in range(len(module) - 1):
                if isinstance(module[i], nn.Conv2d) and isinstance(module[i + 1], nn.BatchNorm2d):
                    module[i] = _fold_pair(module[i], module[i + 1])
                    module[i + 1] = nn.Identity()
    return out


def count_batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
