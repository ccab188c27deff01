"""The map statistics of igd_fast.score.residual (checked against numpy / scipy) and the
Scorer options built on them: map_term="maha" (with residual_sigma), map_position,
image_score="map-max" and "map-excess"."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from _cli import tiny_trained, train_tiny_pair
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy.ndimage import gaussian_filter
from scipy.spatial.distance import mahalanobis

from igd_fast.checkpoint import validation_files
from igd_fast.cli import main
from igd_fast.data import IMAGENET_MEAN, IMAGENET_STD
from igd_fast.ops.patches import fold_patch_maps
from igd_fast.score import Scorer
from igd_fast.score.decide import image_rule
from igd_fast.score.residual import (
    RIDGE,
    ChannelAccumulator,
    PositionAccumulator,
    channel_distance,
    grey_projection,
    standardise_positions,
)
from igd_fast.score.threshold import THRESHOLD_JSON

CAT = "synth"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return tiny_trained(tmp_path_factory.mktemp("igd_residual"), CAT, n_train=12, seed=5)


@pytest.fixture(scope="module")
def grey_trained(tmp_path_factory, trained):
    """The same synthetic images as grey (mode L) files, and a tiny pair trained on them."""
    root = tmp_path_factory.mktemp("igd_residual_grey")
    for f in trained["data"].rglob("*.png"):
        out = root / "data" / f.relative_to(trained["data"])
        out.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(f) as im:
            (im if "ground_truth" in f.parts else im.convert("L")).save(out)
    train_tiny_pair(root / "data", CAT, root / "model")
    test = sorted((root / "data" / CAT / "test").rglob("*.png"))
    return {"data": root / "data", "model": root / "model", "test": test}


# ----------------------------------------------------------------- the statistics


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 3), st.integers(2, 4), st.integers(1, 9), st.integers(1, 9), st.integers(0, 2**31 - 1))
def test_channel_gaussian_equals_numpy_and_scipy(n, c, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(c, c, generator=g)
    batches = [torch.einsum("dc,nchw->ndhw", mix, torch.randn(n, c, h, w, generator=g)) + 0.3 for _ in range(2)]
    acc = ChannelAccumulator()
    for b in batches:
        acc.add(b)
    stats = acc.finish()
    v = np.concatenate([b.permute(0, 2, 3, 1).reshape(-1, c).double().numpy() for b in batches])
    if len(v) < 2:
        return
    cov = np.cov(v, rowvar=False).reshape(c, c)
    reg = cov + RIDGE * np.trace(cov) / c * np.eye(c)
    np.testing.assert_allclose(stats["mean"], v.mean(0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(stats["precision"], np.linalg.inv(reg), rtol=1e-6, atol=1e-9)
    r = torch.randn(1, c, h, w, generator=g)
    got = channel_distance(r, stats)[0, 0].double().numpy()
    want = np.array([[mahalanobis(r[0, :, i, j].double().numpy(), v.mean(0), np.linalg.inv(reg)) ** 2
                      for j in range(w)] for i in range(h)])  # fmt: skip
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_channel_statistics_refuse_too_little_and_wrong_channels():
    acc = ChannelAccumulator()
    with pytest.raises(ValueError, match="at least two"):
        acc.finish()
    acc.add(torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match="3 channels, residual has 2"):
        channel_distance(torch.zeros(1, 2, 4, 4), acc.finish())


def _pixels(x: torch.Tensor) -> torch.Tensor:
    std, mean = (torch.tensor(v, dtype=x.dtype).view(1, 3, 1, 1) for v in (IMAGENET_STD, IMAGENET_MEAN))
    return x * std + mean


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 3), st.integers(1, 6), st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_grey_projection_is_the_nearest_grey_image(n, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, h, w, dtype=torch.float64, generator=g)
    p = grey_projection(x, IMAGENET_MEAN, IMAGENET_STD)
    u = _pixels(p)
    torch.testing.assert_close(u[:, :1].expand_as(u), u, rtol=0, atol=1e-12)  # R = G = B in pixel space
    torch.testing.assert_close(grey_projection(p, IMAGENET_MEAN, IMAGENET_STD), p, rtol=0, atol=1e-12)
    # no other grey image is closer in pixel space (least squares)
    best = (_pixels(x) - u).pow(2).sum(1)
    for _ in range(5):
        other = u + 0.1 * torch.randn(n, 1, h, w, dtype=torch.float64, generator=g)
        assert bool(((_pixels(x) - other).pow(2).sum(1) >= best - 1e-12).all())
    # keep: the same grey image plus that fraction of the image's own colour
    k = 0.1 + 0.8 * torch.rand((), dtype=torch.float64, generator=g).item()
    pk = _pixels(grey_projection(x, IMAGENET_MEAN, IMAGENET_STD, keep=k))
    torch.testing.assert_close(pk, u + k * (_pixels(x) - u), rtol=0, atol=1e-12)
    torch.testing.assert_close(grey_projection(x, IMAGENET_MEAN, IMAGENET_STD, keep=1.0), x, rtol=0, atol=1e-12)


def test_position_stats_per_pixel_equal_numpy():
    g = torch.Generator().manual_seed(0)
    maps = [torch.rand(12, 20, generator=g) * (1 + torch.arange(20.0)) for _ in range(5)]
    acc = PositionAccumulator(grid=32)  # the grid is larger than the maps: per pixel
    for m in maps:
        acc.add(m)
    stats = acc.finish()
    a = torch.stack(maps).double().numpy()
    np.testing.assert_allclose(stats["mean"], a.mean(0), rtol=1e-9)
    np.testing.assert_allclose(stats["std"], a.std(0, ddof=1), rtol=1e-6)
    z = standardise_positions(maps[0], stats).double().numpy()
    np.testing.assert_allclose(z, (a[0] - a.mean(0)) / a.std(0, ddof=1), rtol=1e-4, atol=1e-5)


def test_position_stats_pool_blocks():
    g = torch.Generator().manual_seed(1)
    maps = [torch.rand(64, 96, generator=g) for _ in range(3)]
    acc = PositionAccumulator(grid=16)  # 4×6-pixel cells
    for m in maps:
        acc.add(m)
    stats = acc.finish()
    a = torch.stack(maps).double().numpy()
    cell = a.reshape(3, 16, 4, 16, 6)
    mean, sq = cell.mean((2, 4)), (cell**2).mean((2, 4))
    np.testing.assert_allclose(stats["mean"], mean.mean(0), rtol=1e-9)
    np.testing.assert_allclose(np.square(stats["std"]), (sq.sum(0) - 3 * mean.mean(0) ** 2) / 2, rtol=1e-6)
    # a constant cell is floored, never divided by 0
    flat = PositionAccumulator(grid=4)
    for _ in range(2):
        flat.add(torch.ones(8, 8))
    assert min(min(r) for r in flat.finish()["std"]) > 0


# ----------------------------------------------------------------- the Scorer options


def _model_res_maps(scorer, paths, kind):
    out = []
    with torch.inference_mode():
        for batch in scorer.loader(paths):
            x = batch.images.float()
            out.append(scorer.module.component_maps(scorer.module.terms(x), x.shape[-2:])[kind])
    return torch.cat(out)


def _smoothed(r: torch.Tensor, sigma: float) -> torch.Tensor:
    # scipy's filter on each channel plane: the independent peer of residual_sigma
    if sigma == 0:
        return r
    return torch.from_numpy(gaussian_filter(r.double().numpy(), (0, 0, sigma, sigma), mode="reflect", truncate=4.0))


@pytest.mark.parametrize("residual_sigma", [0.0, 1.5])
def test_maha_map_is_the_residual_distance(trained, residual_sigma):
    model = trained["model"]
    s = Scorer(model, device="cpu", map_term="maha", fold_bn=False, channels_last=False,
               residual_sigma=residual_sigma)  # fmt: skip
    cal = s.calibration(recompute=True)
    val = validation_files(model)
    x_val = torch.cat([b.images.float() for b in s.loader(val)])
    with torch.inference_mode():
        g, loc = s.global_model, s.local_model
        r_g = x_val - g(x_val)[1]  # the global residual, by hand
        p, grid = s.component("local").patches(x_val)
        r_l = fold_patch_maps(p - loc(p)[1], grid, "mean")  # the local residual, folded
    r_g, r_l = _smoothed(r_g, residual_sigma), _smoothed(r_l, residual_sigma)
    for kind, r in (("global", r_g), ("local", r_l)):
        v = r.permute(0, 2, 3, 1).reshape(-1, 3).double().numpy()
        np.testing.assert_allclose(cal["channel_stats"][kind]["mean"], v.mean(0), rtol=1e-6, atol=1e-8)
        cov = np.cov(v, rowvar=False)
        prec = np.linalg.inv(cov + RIDGE * np.trace(cov) / 3 * np.eye(3))
        np.testing.assert_allclose(cal["channel_stats"][kind]["precision"], prec, rtol=1e-4)
        d = r.permute(0, 2, 3, 1).double().numpy() - v.mean(0)
        want = np.einsum("nhwc,cd,nhwd->nhw", d, prec, d)
        got = _model_res_maps(s, val, kind)[:, 0].double().numpy()
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
    # the image scores do not change: only the map
    plain = Scorer(model, device="cpu", fold_bn=False, channels_last=False)
    x = next(iter(s.loader(trained["test"][:4]))).images
    torch.testing.assert_close(s.score_batch(x).score, plain.score_batch(x).score, rtol=1e-5, atol=1e-6)


def test_map_max_scores_the_final_map_and_calibrates_on_it(trained):
    model = trained["model"]
    s = Scorer(model, device="cpu", map_term="maha", map_sigma=2.0, image_score="map-max")
    cal = s.calibration(recompute=True)
    val = list(s.score_paths(validation_files(model)))
    peaks = [float(r.map.max()) for r in val]
    assert cal["threshold"] == pytest.approx(image_rule(peaks, [], cal["alpha"])["threshold"], rel=1e-6)
    for r in s.score_paths(trained["test"]):
        assert r.score == pytest.approx(float(r.map.max()), rel=1e-6)
    # without maps asked for, the same scores
    again = [r.score for r in s.score_paths(trained["test"], want_maps=False)]
    assert again == [r.score for r in s.score_paths(trained["test"])]


def test_map_excess_scores_the_area_above_the_normals_quantile(trained):
    model = trained["model"]
    kw = dict(device="cpu", map_term="maha", map_sigma=1.0)
    raw = Scorer(model, **kw)  # the same final maps, scored by the terms
    s = Scorer(model, image_score="map-excess", excess_quantile=0.9, **kw)
    cal = s.calibration(recompute=True)
    val = [r.map for r in raw.score_paths(validation_files(model))]
    level = np.quantile(np.concatenate([m.ravel() for m in val]).astype(np.float64), 0.9)
    assert cal["excess_level"] == pytest.approx(level, rel=1e-6)
    excess = [float(np.clip(m.astype(np.float64) - level, 0, None).sum() / m.size) for m in val]
    assert cal["threshold"] == pytest.approx(image_rule(excess, [], cal["alpha"])["threshold"], rel=1e-5, abs=1e-9)
    got = list(s.score_paths(trained["test"]))
    for a, b in zip(raw.score_paths(trained["test"]), got, strict=True):
        np.testing.assert_allclose(b.map, a.map, rtol=1e-6)
        assert b.score == pytest.approx(float(np.clip(a.map - level, 0, None).mean()), rel=1e-5, abs=1e-9)
    assert [r.score for r in s.score_paths(trained["test"], want_maps=False)] == [r.score for r in got]
    # a higher quantile counts fewer pixels: scores cannot rise
    hi = Scorer(model, image_score="map-excess", excess_quantile=0.99, **kw)
    assert all(h.score <= g.score + 1e-12 for h, g in zip(hi.score_paths(trained["test"]), got, strict=True))


def test_map_position_standardises_by_validation_positions(trained):
    model = trained["model"]
    kw = dict(device="cpu", map_term="abs", map_sigma=1.0)
    raw = Scorer(model, **kw)
    pos = Scorer(model, map_position=True, **kw)
    cal = pos.calibration(recompute=True)
    val = validation_files(model)
    acc = PositionAccumulator()
    for r in raw.score_paths(val):
        acc.add(torch.from_numpy(r.map))
    want = acc.finish()
    np.testing.assert_allclose(cal["position_stats"]["mean"], want["mean"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(cal["position_stats"]["std"], want["std"], rtol=1e-5, atol=1e-7)
    for a, b in zip(raw.score_paths(trained["test"]), pos.score_paths(trained["test"]), strict=True):
        np.testing.assert_allclose(b.map, standardise_positions(torch.from_numpy(a.map), want).numpy(), rtol=1e-4,
                                   atol=1e-5)  # fmt: skip
        assert b.score == pytest.approx(a.score, rel=1e-6)  # terms score: unchanged


def test_new_options_key_the_cache_and_damage_is_recalibrated(trained):
    model = trained["model"]
    Scorer(model, device="cpu").calibration(recompute=True)
    s = Scorer(model, device="cpu", map_term="maha", map_position=True, image_score="map-max")
    cal = s.calibration()
    assert cal["scoring"]["map_term"] == "maha" and "channel_stats" in cal and "position_stats" in cal
    # another residual sigma or quantile is another calibration
    s2 = Scorer(model, device="cpu", map_term="maha", residual_sigma=1.0, image_score="map-excess")
    c2 = s2.calibration()
    assert c2["scoring"]["residual_sigma"] == 1.0 and np.isfinite(c2["excess_level"])
    assert c2["channel_stats"] != cal["channel_stats"]
    d = json.loads((model / THRESHOLD_JSON).read_text())
    d["excess_level"] = float("nan")
    (model / THRESHOLD_JSON).write_text(json.dumps(d))
    with pytest.warns(UserWarning, match="excess_level"):
        assert np.isfinite(Scorer(model, device="cpu", map_term="maha", residual_sigma=1.0,
                                  image_score="map-excess").calibration()["excess_level"])  # fmt: skip
    cal = Scorer(model, device="cpu", map_term="maha", map_position=True, image_score="map-max").calibration()
    d = json.loads((model / THRESHOLD_JSON).read_text())
    d["channel_stats"]["global"]["precision"][0][0] = float("nan")
    (model / THRESHOLD_JSON).write_text(json.dumps(d))
    with pytest.warns(UserWarning, match="channel_stats"):
        again = Scorer(model, device="cpu", map_term="maha", map_position=True, image_score="map-max").calibration()
    assert np.isfinite(again["channel_stats"]["global"]["precision"][0][0])


def _tint(scorer: Scorer) -> None:
    """Add a colour that varies over the image (zero-mean over R, G, B in pixel space) to
    every reconstruction: a constant one would be absorbed by the residual's mean."""
    d = (torch.tensor([0.2, -0.1, -0.1]) / torch.tensor(IMAGENET_STD)).view(1, 3, 1, 1)

    def hook(mod, inp, out):
        i = torch.arange(out.shape[-2], dtype=out.dtype).view(-1, 1)
        j = torch.arange(out.shape[-1], dtype=out.dtype).view(1, -1)
        return out + d.to(out.dtype) * torch.sin(0.7 * i + 0.3 * j)

    for m in (scorer.global_model, scorer.local_model):
        m.decoder.register_forward_hook(hook)


def _scale_colour(scorer: Scorer, keep: float) -> None:
    """Scale each reconstruction's colour (its departure from the channel mean in pixel
    space) by ``keep``: the damped reconstruction, built here without grey_projection."""
    std, mean = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_STD, IMAGENET_MEAN))

    def hook(mod, inp, out):
        pix = out * std.to(out.dtype) + mean.to(out.dtype)
        g = pix.mean(1, keepdim=True)
        return (g + keep * (pix - g) - mean.to(out.dtype)) / std.to(out.dtype)

    for m in (scorer.global_model, scorer.local_model):
        m.decoder.register_forward_hook(hook)


def _tint_moves(model, test, **kw) -> list[float]:
    """Per test image, how far the tint (_tint) moves the map under these options, relative
    to the map's peak."""
    plain, tinted = Scorer(model, **kw), Scorer(model, **kw)
    _tint(tinted)
    plain.calibration(recompute=True), tinted.calibration(recompute=True)
    return [float(np.abs(a.map - b.map).max() / np.abs(a.map).max())
            for a, b in zip(plain.score_paths(test), tinted.score_paths(test), strict=True)]


@pytest.mark.parametrize("map_term", ["maha", "abs"])
def test_grey_data_damps_the_reconstructions_colour(grey_trained, trained, map_term):
    kw = dict(device="cpu", map_term=map_term, fold_bn=False, channels_last=False)
    model, test = grey_trained["model"], grey_trained["test"]
    auto = Scorer(model, **kw)
    assert auto.recon_colour_used == "damped" and auto.scoring["recon_colour"] == "auto"
    assert auto.calibration(recompute=True)["recon_colour_used"] == "damped"
    grey = _tint_moves(model, test, recon_colour="grey", **kw)
    damped = _tint_moves(model, test, **kw)
    rgb = _tint_moves(model, test, recon_colour="rgb", **kw)
    assert max(grey) < 1e-4  # grey: the AE's colour drops out
    assert min(rgb) > 1e-3 and min(damped) > 1e-3  # rgb, damped: the same colour moves every map
    # damped = rgb maps of an AE whose output colour is scaled by sqrt(ridge) in pixel space
    damping = Scorer(model, recon_colour="rgb", **kw)
    _scale_colour(damping, math.sqrt(RIDGE))
    damping.calibration(recompute=True)
    for a, b in zip(auto.score_paths(test), damping.score_paths(test), strict=True):
        np.testing.assert_allclose(a.map, b.map, rtol=1e-3, atol=1e-4 * float(np.abs(b.map).max()))
    plain_rgb = Scorer(model, recon_colour="rgb", **kw)
    for a, b in zip(auto.score_paths(test), plain_rgb.score_paths(test), strict=True):
        assert a.score == pytest.approx(b.score, rel=1e-6)  # the terms keep the model's own reconstruction
    # colour data: auto keeps the reconstruction as it is
    col = Scorer(trained["model"], **kw)
    assert col.recon_colour_used == "rgb" and col.calibration(recompute=True)["recon_colour_used"] == "rgb"
    assert Scorer(trained["model"], recon_colour="grey", **kw).recon_colour_used == "grey"


def test_recon_colour_keys_the_cache_only_for_residual_maps(grey_trained):
    model = grey_trained["model"]
    assert Scorer(model, device="cpu").scoring["recon_colour"] == "rgb"  # lr maps: the legacy value
    Scorer(model, device="cpu", map_term="maha", recon_colour="rgb").calibration(recompute=True)
    again = Scorer(model, device="cpu", map_term="maha").calibration()
    assert again["scoring"]["recon_colour"] == "auto" and again["recon_colour_used"] == "damped"
    # a record from when "auto" picked the grey reconstruction (its key lacks the decision)
    p = Path(model) / "threshold.json"
    old = json.loads(p.read_text())
    old["scoring"].pop("recon_colour_used")
    old["recon_colour_used"], old["threshold"] = "grey", 123.0
    p.write_text(json.dumps(old))
    fresh = Scorer(model, device="cpu", map_term="maha").calibration()
    assert fresh["recon_colour_used"] == "damped" and fresh["threshold"] != 123.0


@pytest.mark.parametrize("kw", [dict(image_score="mean"), dict(recon_colour="gray"), dict(recon_colour="grey"),
                                dict(recon_colour="damped"),
                                dict(map_term="mahalanobis"), dict(residual_sigma=-1.0),
                                dict(residual_sigma=1.0, map_term="abs"), dict(excess_quantile=1.0),
                                dict(excess_quantile=0.0), dict(excess_quantile=float("nan"))])
def test_bad_options_are_refused(trained, kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        Scorer(trained["model"], device="cpu", **kw)


def test_eval_flags_reach_the_scorer(trained, tmp_path, capsys):
    out = tmp_path / "ev"
    rc = main(["eval", "--model", str(trained["model"]), "--data", str(trained["data"]), "--category", CAT,
               "--out", str(out), "--map-term", "maha", "--map-position", "--image-score", "map-max",
               "--no-progress", "--device", "cpu"])  # fmt: skip
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["scoring"]["map_term"] == "maha" and rep["scoring"]["map_position"] is True
    assert rep["scoring"]["image_score"] == "map-max"
    rc = main(["eval", "--model", str(trained["model"]), "--data", str(trained["data"]), "--category", CAT,
               "--out", str(out), "--map-term", "maha", "--residual-sigma", "2", "--image-score", "map-excess",
               "--excess-quantile", "0.9", "--no-progress", "--device", "cpu"])  # fmt: skip
    assert rc == 0
    sc = json.loads((out / "report.json").read_text())["scoring"]
    assert (sc["residual_sigma"], sc["image_score"], sc["excess_quantile"]) == (2.0, "map-excess", 0.9)
    assert sc["recon_colour"] == "auto"
    rc = main(["eval", "--model", str(trained["model"]), "--data", str(trained["data"]), "--category", CAT,
               "--out", str(out), "--map-term", "abs", "--recon-colour", "grey", "--no-progress", "--device", "cpu"])
    assert rc == 0 and json.loads((out / "report.json").read_text())["scoring"]["recon_colour"] == "grey"
    for colour in ("grey", "damped"):
        rc = main(["eval", "--model", str(trained["model"]), "--data", str(trained["data"]), "--category", CAT,
                   "--out", str(out), "--recon-colour", colour, "--no-progress", "--device", "cpu"])
        assert rc == 2
        assert f"--recon-colour {colour} applies to --map-term abs or maha" in capsys.readouterr().err
