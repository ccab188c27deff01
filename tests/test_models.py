"""igd_fast.models: config, shapes, Gaussian descriptor, torchvision-file init, KD."""

from __future__ import annotations

import pytest
import torch

from igd_fast import GLOBAL, LOCAL
from igd_fast.models import IGD, Encoder, GaussianDescriptor, ModelConfig, ResNetTrunk, distill_encoder, load_trunk

SMALL = {"image_size": 64, "width": 8, "latent": 16, "win_size": 3, "weights": (0.3, 0.3, 0.4)}


def test_config_defaults_roundtrip_and_errors():
    g, lo = ModelConfig(), ModelConfig(kind="local")
    assert g.msssim() == GLOBAL and lo.msssim() == LOCAL
    assert (g.input_size, lo.input_size) == (256, 32)
    assert (g.rho, g.lambda3, g.gamma, g.lr, g.weight_decay, g.estep_every, g.latent) == (
        0.15,
        0.1,
        0.2,
        1e-4,
        1e-6,
        10,
        128,
    )
    for c in (g, lo, ModelConfig(**SMALL, gamma=None)):
        d = c.to_dict()
        assert ModelConfig.from_dict(d) == c
        import json

        assert ModelConfig.from_dict(json.loads(json.dumps(d))) == c
    with pytest.raises(ValueError, match="kind must be one of"):
        ModelConfig(kind="medium")
    with pytest.raises(ValueError, match=r"64×64 is too small for MS-SSIM with 5 scales.*needs >= 161"):
        ModelConfig(image_size=64)
    with pytest.raises(ValueError, match="multiple of 32"):
        ModelConfig(image_size=250)
    with pytest.raises(ValueError, match="unknown ModelConfig fields"):
        ModelConfig.from_dict({"kind": "global", "colour": 1})


@pytest.mark.parametrize("kind,size", [("global", 64), ("local", 32)])
def test_forward_shapes_and_modules(kind, size):
    cfg = ModelConfig(kind=kind, **({**SMALL} if kind == "global" else {"image_size": 64, "width": 8}))
    m = IGD(cfg)
    x = torch.randn(3, 3, size, size)
    z, x_hat = m(x)
    assert z.shape == (3, cfg.latent) and x_hat.shape == x.shape
    assert m.critic(x_hat).shape == (3,)
    assert m.descriptor.l_h(z).shape == (3,)
    assert {"descriptor.mu", "descriptor.sigma2"} <= set(m.state_dict())


def test_descriptor_l_h_formula():
    d = GaussianDescriptor(4)
    mu, s2 = torch.tensor([1.0, -2.0, 0.5, 0.0]), 2.5
    d.set(mu, s2)
    z = torch.stack([mu, mu + torch.tensor([1.0, 1.0, 0.0, 0.0]), torch.zeros(4)])
    expect = 1 - torch.exp(-((z - mu) ** 2).sum(1) / s2)
    torch.testing.assert_close(d.l_h(z), expect)
    assert float(d.l_h(z)[0]) == 0.0 and abs(float(d.sigma) - s2**0.5) < 1e-6


def _torchvision_like_file(path):
    """A state_dict laid out as torchvision's resnet18 (trunk keys + fc 1000×512)."""
    torch.manual_seed(5)
    trunk = ResNetTrunk(64, (2, 2, 2, 2))
    with torch.no_grad():  # non-default values so a copied tensor is recognisable
        for m in trunk.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5), m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1), m.running_var.uniform_(0.5, 1.5)
    sd = dict(trunk.state_dict())
    sd["fc.weight"], sd["fc.bias"] = torch.randn(1000, 512), torch.randn(1000)
    torch.save(sd, path)
    return sd


def test_encoder_init_from_torchvision_state_dict(tmp_path):
    f = tmp_path / "resnet18.pth"
    sd = _torchvision_like_file(f)
    enc = Encoder(latent=128, width=64)
    proj_before = enc.proj.weight.clone()
    load_trunk(enc, f)
    own = enc.state_dict()
    for k in ("conv1.weight", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight", "layer4.1.bn2.running_var"):
        assert torch.equal(own[k], sd[k]), k
    assert torch.equal(enc.proj.weight, proj_before)  # fc of the file is not ours
    with pytest.raises(ValueError, match=r"needs width=64"):
        load_trunk(Encoder(width=8), f)
    torch.save({"foo": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not a torchvision ResNet state_dict"):
        load_trunk(enc, tmp_path / "other.pth")


def test_knowledge_distillation_lowers_the_kd_loss(tmp_path):
    f = tmp_path / "teacher.pth"
    _torchvision_like_file(f)
    torch.manual_seed(0)
    student = Encoder(latent=16, width=8)  # narrower: a linear adaptor bridges 64 -> 512
    batches = [torch.randn(4, 3, 32, 32)]
    losses = distill_encoder(student, f, batches, steps=12, lr=3e-3)
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < 0.8 * losses[0]


def test_rho_weighs_the_absolute_error_part_of_l_r():
    from igd_fast.models.terms import recon_term
    from igd_fast.reference.ssim import ms_ssim

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 64, 64, generator=g) * 4 - 2
    x_hat = x + 0.3 * torch.randn(2, 3, 64, 64, generator=g)
    kw = dict(kind="local", image_size=64, width=8, latent=8, blocks=(1, 1, 1, 1))
    mae = (x - x_hat).abs().mean((1, 2, 3)) / 4.7579
    for rho in (1.0, 0.0, 0.5):
        m = IGD(ModelConfig(rho=rho, **kw))
        # the MS-SSIM part from the pure-PyTorch reference (itself checked against the peers)
        ms = ms_ssim(x, x_hat, m.config.msssim(), "none")
        torch.testing.assert_close(recon_term(m, x, x_hat, "torch"), rho * mae + (1 - rho) * (1 - ms),
                                   rtol=1e-4, atol=1e-5)  # fmt: skip
    with pytest.raises(ValueError, match="rho"):
        ModelConfig(rho=1.5, **kw)
