"""Synthetic defects (igd_fast.data.defects) and the defect model's networks."""

from __future__ import annotations

import pytest
import torch

from igd_fast.data.defects import FILLS, SHAPES, defect_fill, defect_shape, draw_defect, perlin
from igd_fast.models.defect import DefectConfig, DefectModel


def _img(h=48, w=64, seed=0):
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))


def test_perlin_is_seeded_bounded_and_smooth():
    a = perlin(40, 56, (2, 4), torch.Generator().manual_seed(1))
    b = perlin(40, 56, (2, 4), torch.Generator().manual_seed(1))
    c = perlin(40, 56, (2, 4), torch.Generator().manual_seed(2))
    assert a.shape == (40, 56) and torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.abs().max()) <= 1.5
    # gradient noise: neighbouring pixels differ far less than the value range
    assert float((a[:, 1:] - a[:, :-1]).abs().max()) < 0.5 * float(a.max() - a.min())


@pytest.mark.parametrize("shape", SHAPES)
def test_shapes_are_binary_masks_with_pixels(shape):
    gen = torch.Generator().manual_seed(3)
    for _ in range(10):
        m = defect_shape(64, 80, gen, shape)
        assert m.shape == (64, 80)
        assert set(m.unique().tolist()) <= {0.0, 1.0}
        assert m.sum() >= 8 or m.sum() == 0


@pytest.mark.parametrize("fill", FILLS)
def test_fills_are_images_in_range(fill):
    gen = torch.Generator().manual_seed(4)
    img = _img()
    pool = [_img(seed=5), _img(32, 32, seed=6)]  # a pool image of another size is resized
    f = defect_fill(img, pool, gen, fill)
    assert f.shape == img.shape
    assert float(f.min()) >= 0 and float(f.max()) <= 1


def test_draw_defect_changes_only_masked_pixels_and_is_seeded():
    img, pool = _img(), [_img(seed=7)]
    x1, m1 = draw_defect(img, pool, torch.Generator().manual_seed(9))
    x2, m2 = draw_defect(img, pool, torch.Generator().manual_seed(9))
    assert torch.equal(x1, x2) and torch.equal(m1, m2)
    assert m1.shape == (1, 48, 64)
    outside = m1.expand_as(img) == 0
    assert torch.equal(x1[outside], img[outside])
    assert float(x1.min()) >= 0 and float(x1.max()) <= 1


def test_bad_names_are_refused():
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="shape"):
        defect_shape(8, 8, gen, "square")
    with pytest.raises(ValueError, match="fill"):
        defect_fill(_img(), [], gen, "paint")


@pytest.mark.parametrize("hw", [(37, 53), (64, 64), (20, 90)])
def test_defect_model_keeps_any_size(hw):
    cfg = DefectConfig(image_size=64, width=4, depth=3, recon_width=4, recon_depth=2, steps=1)
    model = DefectModel(cfg).eval()
    with torch.inference_mode():
        logit, rep = model(torch.randn(2, 3, *hw))
    assert logit.shape == (2, 1, *hw) and rep.shape == (2, 3, *hw)


def test_defect_config_round_trips_and_checks():
    cfg = DefectConfig(image_size=128, width=8, steps=10)
    assert DefectConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="image_size"):
        DefectConfig(image_size=8, depth=4)
    with pytest.raises(ValueError, match="unknown"):
        DefectConfig.from_dict({**cfg.to_dict(), "colour": 1})
