"""Nearest-2x upsample + 3x3 conv as one polyphase 2x2 conv (igd_fast.models.polyphase):
the same function as the eager modules, and the Scorer scores the same with it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _cli import tiny_trained
from torch import nn

from igd_fast.models import IGD, ModelConfig
from igd_fast.models.fold import fold_batchnorm
from igd_fast.models.polyphase import FusedHead, FusedUpBlock, UpsampleConv2d, fuse_upsampling
from igd_fast.score import Scorer


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


@pytest.mark.parametrize("hw", [(1, 1), (2, 2), (3, 5), (8, 8)])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_upsample_conv_equals_upsample_then_conv(hw, channels_last, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, 3, 1, 1, bias=bias)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, 6, *hw).contiguous(memory_format=fmt)
    # the reference in float64: the fused form is checked against the maths, not against itself
    with torch.no_grad():
        ref = F.conv2d(F.interpolate(x.double(), scale_factor=2, mode="nearest"), conv.weight.double(),
                       None if conv.bias is None else conv.bias.double(), padding=1)  # fmt: skip
        out = UpsampleConv2d(conv)(x)
        eager = conv(F.interpolate(x, scale_factor=2, mode="nearest"))
    assert out.shape == ref.shape
    assert _rel(out, ref) < 1e-5
    assert _rel(eager, ref) < 1e-5


def test_upsample_conv_rejects_other_convolutions():
    with pytest.raises(ValueError, match="3x3, stride-1, padding-1"):
        UpsampleConv2d(nn.Conv2d(4, 4, 3, 2, 1))
    with pytest.raises(ValueError, match="3x3, stride-1, padding-1"):
        UpsampleConv2d(nn.Conv2d(4, 4, 1))


def _random_bn(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


@pytest.mark.parametrize("kind", ["global", "local"])
@pytest.mark.parametrize("fold", [False, True], ids=["bn", "folded"])
@pytest.mark.parametrize("min_size", [1, 8])
def test_fused_model_equals_eager(kind, fold, min_size):
    torch.manual_seed(0)
    weights = (0.3, 0.3, 0.4) if kind == "global" else None  # 3 scales fit the 128² global model
    cfg = ModelConfig(kind=kind, image_size=128, width=8, **({"weights": weights} if weights else {}))
    m = _random_bn(IGD(cfg))
    m = fold_batchnorm(m) if fold else m
    f = fuse_upsampling(m, min_size=min_size)
    ups = [b for b in f.modules() if isinstance(b, FusedUpBlock)]
    # the decoder starts at input_size / 32: stages fused from min_size up, and the head always
    side = m.config.input_size // 32
    assert len(ups) == sum(side * 2**i >= min_size for i in range(4))
    assert isinstance(f.decoder.head, FusedHead)
    assert not any(isinstance(b, (FusedUpBlock, FusedHead)) for b in m.modules())  # the original is untouched
    s = m.config.input_size
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(3, 3, s, s).contiguous(memory_format=fmt)
        with torch.inference_mode():
            (z0, y0), (z1, y1) = m.to(memory_format=fmt)(x), f.to(memory_format=fmt)(x)
        assert torch.equal(z0, z1)  # the encoder is not touched
        assert _rel(y1, y0) < 1e-5


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return tiny_trained(tmp_path_factory.mktemp("igd_polyphase"), "widget", n_train=8, seed=5)


def test_scorer_fused_agrees_with_eager(trained):
    kw = dict(device="cpu", batch_size=3, score_norm="sum", map_norm="sum")
    eager = Scorer(trained["model"], fuse_upsample=False, **kw)
    fused = Scorer(trained["model"], fuse_upsample=True, **kw)
    assert Scorer(trained["model"], **kw).fuse_upsample  # on by default on the CPU
    assert any(isinstance(b, FusedHead) for b in fused.local_model.modules())
    assert not any(isinstance(b, FusedHead) for b in eager.local_model.modules())
    paths = trained["test"]
    a = list(eager.score_paths(paths, want_maps=True))
    b = list(fused.score_paths(paths, want_maps=True))
    assert [r.path for r in a] == [r.path for r in b] == [str(p) for p in paths]
    for ra, rb in zip(a, b, strict=True):
        for attr in ("score", "s_global", "s_local"):
            va, vb = getattr(ra, attr), getattr(rb, attr)
            assert abs(va - vb) <= 1e-5 * abs(va), (attr, va, vb)
        assert _rel(torch.from_numpy(rb.map), torch.from_numpy(ra.map)) < 1e-5
