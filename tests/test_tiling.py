"""Tiles cover the image and stitch back exactly."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from igd_fast.score.tiling import Tiler, starts

sizes = st.integers(1, 70)


@settings(max_examples=60, deadline=None)
@given(h=sizes, w=sizes, tile=st.integers(1, 40), data=st.data())
def test_tiles_cover_every_pixel_and_stay_inside(h, w, tile, data):
    stride = data.draw(st.integers(1, tile))
    cover = torch.zeros(h, w)
    for y, x, th, tw in Tiler(tile, stride).boxes(h, w):
        assert 0 <= y and y + th <= h and 0 <= x and x + tw <= w
        assert (th, tw) == (min(tile, h), min(tile, w))
        cover[y : y + th, x : x + tw] += 1
    assert cover.min() >= 1


@settings(max_examples=40, deadline=None)
@given(h=sizes, w=sizes, tile=st.integers(1, 40), c=st.integers(1, 3), data=st.data())
def test_identity_stitches_back_exactly(h, w, tile, c, data):
    """Each tile's own pixels as its map: the stitched map is the image (a delta stays where
    it was, a constant stays constant), whatever the overlap."""
    tiler = Tiler(tile, data.draw(st.integers(1, tile)))
    x = torch.rand(2, c, h, w, dtype=torch.float64)
    torch.testing.assert_close(tiler.stitch(tiler.split(x), h, w), x, rtol=1e-12, atol=1e-12)
    delta = torch.zeros(1, 1, h, w, dtype=torch.float64)
    delta[0, 0, h // 2, w // 3] = 1.0
    back = tiler.stitch(tiler.split(delta), h, w)
    assert back.nonzero().tolist() == [[0, 0, h // 2, w // 3]]
    assert float(back[0, 0, h // 2, w // 3]) == pytest.approx(1.0, abs=1e-12)
    const = tiler.stitch(torch.full((len(tiler.boxes(h, w)), 1, min(tile, h), min(tile, w)), 0.7), h, w)
    torch.testing.assert_close(const, torch.full((1, 1, h, w), 0.7))


def test_apply_matches_a_pointwise_model_and_batches_tiles():
    """A per-pixel function gives the same map tiled or whole; ``batch`` bounds each call."""
    x = torch.randn(3, 2, 37, 53)
    calls = []

    def fn(t):
        calls.append(t.shape[0])
        return (t**2).sum(1, keepdim=True)

    tiler = Tiler(16, 12)
    torch.testing.assert_close(tiler.apply(fn, x, batch=5), (x**2).sum(1, keepdim=True))
    assert max(calls) <= 5 and sum(calls) == 3 * len(tiler.boxes(37, 53))
    calls.clear()
    tiler.apply(fn, x[..., :16, :10], batch=5)
    assert calls == [3]  # one tile covers it: the image itself, in one call


def test_starts_end_at_the_edge():
    assert starts(10, 4, 3) == [0, 3, 6]
    assert starts(11, 4, 3) == [0, 3, 6, 7]
    assert starts(4, 8, 2) == [0]


def test_bad_stride_is_refused():
    with pytest.raises(ValueError, match="stride"):
        Tiler(8, 9)
    with pytest.raises(ValueError, match="stride"):
        Tiler(8, 0)


def test_defect_part_tiles_large_images_only():
    """The defect component scores an image larger than its tile in tiles (each network pass
    sees at most the tile), and one no larger than the tile whole, exactly as without a tiler."""
    from igd_fast.models.defect import DefectConfig, DefectModel
    from igd_fast.score.components import DefectPart

    model = DefectModel(DefectConfig(image_size=64, width=4, depth=2, recon_width=4, recon_depth=2)).eval()
    norm = {"logit_mean": 0.0, "logit_std": 1.0, "resid_mean": 0.1, "resid_std": 0.5, "resid_weight": 1.0}
    seen = []
    model.register_forward_pre_hook(lambda m, a: seen.append(tuple(a[0].shape[-2:])))
    tiled, whole = DefectPart(model, norm, Tiler(32, 24)), DefectPart(model, norm, None)
    with torch.no_grad():
        small = torch.randn(2, 3, 32, 20)
        torch.testing.assert_close(tiled.standardised(small), whole.standardised(small))
        seen.clear()
        big = torch.randn(1, 3, 60, 90)
        z = tiled.standardised(big)
    assert z.shape == (1, 2, 60, 90) and torch.isfinite(z).all()  # the map and the flip-averaged term
    assert seen and all(h <= 32 and w <= 32 for h, w in seen)
    assert tiled.exportable().tiler is None
