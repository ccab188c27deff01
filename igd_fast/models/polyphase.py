"""Nearest 2x upsampling folded into the convolution after it, for inference.

A 3x3 convolution (stride 1, zero padding 1) of a map upsampled 2x by nearest neighbour
reads each input pixel up to four times: output pixel (2i + a, 2j + b) sees input rows
{i - 1, i} (a = 0) or {i, i + 1} (a = 1) and the same for columns, so it is a 2x2
convolution of the small map whose taps are sums of the 3x3 taps ("polyphase"
decomposition). All four phases are one 2x2 convolution with 4·C_out channels over the
small map padded by 1, interleaved back into the 2x map by one strided copy: 16/36 of the
multiply-adds at large maps ((H + 1)² / H² more at small ones), no upsampled input in
memory, and a 4x wider output for the decoder head's 3-channel convolution (which
oneDNN runs at a fraction of the wide layers' rate). A 1x1 shortcut commutes with nearest
upsampling, so it runs on the small map and is upsampled inside the residual add.

The same function as the original module up to float rounding (summed taps); the
decoders of :mod:`.nets` only. Used by the Scorer with ``fuse_upsample=True``.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .nets import Decoder, UpBlock

# R[a] maps the three taps of one dimension to the two small-map taps of phase a
_R = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]], [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])


def _is_up(m: nn.Module) -> bool:
    return isinstance(m, nn.Upsample) and m.mode == "nearest" and float(m.scale_factor or 0) == 2.0


class UpsampleConv2d(nn.Module):
    """``conv(upsample_nearest_2x(x))`` for a 3x3, stride-1, padding-1 ``conv``, computed
    as one 2x2 convolution of ``x`` with the four phases' summed taps."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if conv.kernel_size != (3, 3) or conv.stride != (1, 1) or conv.padding != (1, 1) or conv.groups != 1 \
                or conv.dilation != (1, 1) or conv.padding_mode != "zeros":  # fmt: skip
            raise ValueError(f"UpsampleConv2d needs a 3x3, stride-1, padding-1 convolution, got {conv}")
        w = conv.weight.detach()
        r = _R.to(torch.float64)
        # phase (a, b): R[a] @ W @ R[b]^T over the kernel dims, summed in float64, then rounded once
        w2 = torch.einsum("apk,oikl,bql->aboipq", r, w.double(), r)
        w2 = w2.reshape(4 * conv.out_channels, conv.in_channels, 2, 2)
        self.out_channels = conv.out_channels
        self.weight = nn.Parameter(w2.to(w.dtype).contiguous(memory_format=torch.channels_last), requires_grad=False)
        b = conv.bias.detach().repeat(4) if conv.bias is not None else None
        self.bias = nn.Parameter(b, requires_grad=False) if b is not None else None

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        c = self.out_channels
        y = F.conv2d(x, self.weight, self.bias, padding=1).contiguous(memory_format=torch.channels_last)
        # y[n, (a, b, c), i + a, j + b] -> out[n, c, 2i + a, 2j + b]: one strided view, one copy
        sn, sh, sw = y.stride(0), y.stride(2), y.stride(3)
        v = y.as_strided((n, h, 2, w, 2, c), (sn, sh, sh + 2 * c, sw, sw + c, 1))
        return v.reshape(n, 2 * h, 2 * w, c).permute(0, 3, 1, 2)


def _up_add_(out: Tensor, small: Tensor) -> Tensor:
    """``out += upsample_nearest_2x(small)`` in place, without the upsampled tensor."""
    n, c, h, w = small.shape
    if out.is_contiguous(memory_format=torch.channels_last):
        o = out.permute(0, 2, 3, 1).view(n, h, 2, w, 2, c)
        o += small.permute(0, 2, 3, 1).view(n, h, 1, w, 1, c)
    else:
        out.view(n, c, h, 2, w, 2).add_(small.view(n, c, h, 1, w, 1))
    return out


class FusedUpBlock(nn.Module):
    """An :class:`~.nets.UpBlock` with ``up`` folded into conv1 and the shortcut."""

    def __init__(self, block: UpBlock) -> None:
        super().__init__()
        self.conv1 = UpsampleConv2d(block.conv1)
        self.bn1, self.relu, self.conv2, self.bn2 = block.bn1, block.relu, block.conv2, block.bn2
        self.shortcut = block.shortcut

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(_up_add_(out, self.shortcut(x)))


class FusedHead(nn.Module):
    """The decoder head ``Sequential(Upsample(2, nearest), Conv2d 3x3)`` as one UpsampleConv2d."""

    def __init__(self, head: nn.Sequential) -> None:
        super().__init__()
        self.conv = UpsampleConv2d(head[1])

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


# below this input side the (H + 1)² / H² padding overhead of the 2x2 form loses: at
# width 64 on the 2-core EPYC VM the local decoder's 1² -> 2² stage took 50 ms fused
# against 28 ms, 2² -> 4² 26 against 15, 4² -> 8² 17 against 17, 8² -> 16² 35 against 35
# and the head (16² -> 32², 3 channels) 13 against 44 (benchmarks/layer_profile.py)
DEFAULT_MIN_SIZE = 8


def fuse_upsampling(model: nn.Module, min_size: int = DEFAULT_MIN_SIZE) -> nn.Module:
    """An eval-mode copy of ``model`` whose decoders' nearest-2x upsample + 3x3 conv pairs
    (each stage's first UpBlock and the head) are :class:`UpsampleConv2d` where the map
    going in is at least ``min_size`` pixels wide (the head always: its 3 output channels
    are the slow case); ``model`` is left unchanged. For inference: the summed taps are
    constants (no gradient)."""
    out = copy.deepcopy(model).eval()
    for dec in [m for m in out.modules() if isinstance(m, Decoder)]:
        side = dec.s0
        for stage in dec.layers:
            for i, blk in enumerate(stage):
                if isinstance(blk, UpBlock) and _is_up(blk.up):
                    if side >= min_size:
                        stage[i] = FusedUpBlock(blk)
                    side *= 2
        if len(dec.head) == 2 and _is_up(dec.head[0]) and isinstance(dec.head[1], nn.Conv2d):
            dec.head = FusedHead(dec.head)
    return out
