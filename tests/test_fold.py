"""Folded BatchNorm: the inference networks equal the unfolded ones on random inputs."""

import pytest
import torch

from igd_fast.models import IGD, ModelConfig
from igd_fast.models.fold import count_batchnorms, fold_batchnorm


def _randomise_bn(model):
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            if m.weight is not None:
                m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@pytest.mark.parametrize("variant", ["igd", "dsvdd-rec"])
@pytest.mark.parametrize("kind, size", [("global", 64), ("local", 64)])
def test_folded_networks_equal_the_unfolded(kind, size, variant):
    torch.manual_seed(1)
    cfg = ModelConfig(kind=kind, variant=variant, image_size=size, width=8, latent=16, blocks=(1, 2, 1, 1),
                      win_size=3, weights=(0.3, 0.3, 0.4))  # fmt: skip
    model = IGD(cfg)
    _randomise_bn(model)
    model.eval()
    folded = fold_batchnorm(model)
    assert count_batchnorms(folded) == 0 and count_batchnorms(model) > 0  # the original is untouched
    x = torch.randn(3, 3, cfg.input_size, cfg.input_size)
    with torch.no_grad():
        (z0, r0), (z1, r1) = model(x), folded(x)
        if model.critic is not None:
            torch.testing.assert_close(folded.critic(r0), model.critic(r0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(z1, z0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(r1, r0, rtol=1e-5, atol=1e-5)
