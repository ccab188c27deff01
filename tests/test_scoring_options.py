"""The Scorer's scoring options (score_norm, latent_weight, local_topk, map_sigma) and
their ``score`` / ``eval`` flags, each checked against its formula computed by hand."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _cli import tiny_trained

from igd_fast.checkpoint import validation_files
from igd_fast.cli import main
from igd_fast.models.terms import latent_term, recon_term, sample_scores
from igd_fast.ops.patches import extract_patches
from igd_fast.score import Scorer
from igd_fast.score.decide import image_rule
from igd_fast.score.maps import gaussian_smooth
from igd_fast.score.threshold import THRESHOLD_JSON

CAT = "synth"
SIZE = 64


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return tiny_trained(tmp_path_factory.mktemp("igd_scoring"), CAT, n_train=12, seed=2)


def _scored(scorer, paths):
    return list(scorer.score_paths(paths))


def test_defaults_are_the_paper_sum(trained):
    s = Scorer(trained["model"], device="cpu")
    assert s.scoring == {"score_norm": "sum", "latent_weight": 1.0, "local_topk": 1, "map_sigma": 0.0,
            "map_components": "all",
                         "map_norm": "sum", "map_term": "lr", "map_position": False,
                         "image_score": "terms", "residual_sigma": 0.0, "excess_quantile": 0.95,
                         "recon_colour": "rgb"}  # fmt: skip  (auto decides nothing for the lr map)
    for r in _scored(s, trained["test"]):
        assert r.score == pytest.approx(r.s_global + r.s_local, rel=1e-6, abs=1e-7)


def test_standard_norm_is_validation_zscores(trained):
    raw = Scorer(trained["model"], device="cpu")
    val = _scored(raw, validation_files(trained["model"]))
    stats = {}
    for kind, key in (("global", "s_global"), ("local", "s_local")):
        v = np.array([getattr(r, key) for r in val], np.float64)
        stats[kind] = (v.mean(), v.std(ddof=1))
    std = Scorer(trained["model"], device="cpu", score_norm="standard")
    cal = std.calibration(recompute=True)
    for kind in ("global", "local"):
        assert cal["term_stats"][kind]["mean"] == pytest.approx(stats[kind][0], rel=1e-9)
        assert cal["term_stats"][kind]["std"] == pytest.approx(stats[kind][1], rel=1e-9)
    assert cal["scoring"]["score_norm"] == "standard"
    by_hand = [(r.s_global - stats["global"][0]) / stats["global"][1] + (r.s_local - stats["local"][0])
               / stats["local"][1] for r in val]  # fmt: skip
    assert cal["threshold"] == pytest.approx(image_rule(by_hand, [], cal["alpha"])["threshold"], rel=1e-5, abs=1e-6)
    for r in _scored(std, trained["test"]):
        want = (r.s_global - stats["global"][0]) / stats["global"][1] + (r.s_local - stats["local"][0]) / stats[
            "local"
        ][1]
        assert r.score == pytest.approx(want, rel=1e-5, abs=1e-5)
    # the terms themselves are the raw ones, whatever the combination
    assert [r.s_global for r in _scored(std, trained["test"])] == [r.s_global for r in _scored(raw, trained["test"])]


def test_latent_weight_scales_l_h(trained):
    paths = trained["test"][:3]
    full = Scorer(trained["model"], device="cpu", fold_bn=False, channels_last=False)
    half = Scorer(trained["model"], device="cpu", fold_bn=False, channels_last=False, latent_weight=0.5)
    g = full.global_model
    batch = next(iter(full.loader(paths)))
    x = batch.images.float()
    with torch.inference_mode():
        z, xh = g(x)
        lr, lh = recon_term(g, x, xh), latent_term(g, z)
    assert lh.abs().max() > 0  # the igd variant has an l_h to weigh
    rf, rh = _scored(full, paths), _scored(half, paths)
    for j in range(len(paths)):
        assert rf[j].s_global == pytest.approx(float(lr[j] + lh[j]), rel=1e-4, abs=1e-6)
        assert rh[j].s_global == pytest.approx(float(lr[j] + 0.5 * lh[j]), rel=1e-4, abs=1e-6)
    none = _scored(Scorer(trained["model"], device="cpu", fold_bn=False, channels_last=False, latent_weight=0),
                   paths)  # fmt: skip
    assert [r.s_global for r in none] == pytest.approx(lr.tolist(), rel=1e-4, abs=1e-6)
    # maps carry l_r only: the weight leaves them alone
    assert np.allclose(rf[0].map, none[0].map, atol=1e-6)


def test_local_topk_is_mean_of_k_largest_patches(trained):
    paths = trained["test"][:3]
    s = Scorer(trained["model"], device="cpu", local_topk=3, fold_bn=False, channels_last=False)
    loc = s.local_model
    x = next(iter(s.loader(paths))).images.float()
    with torch.inference_mode():
        p, grid = extract_patches(x, loc.config.patch_size, loc.config.patch_stride)
        per = sample_scores(loc, p, False)[0].view(x.shape[0], grid.count).double().numpy()
    want = np.sort(per, 1)[:, ::-1][:, :3].mean(1)
    got = [r.s_local for r in _scored(s, paths)]
    assert got == pytest.approx(want.tolist(), rel=1e-4, abs=1e-6)
    big = Scorer(trained["model"], device="cpu", local_topk=10_000, fold_bn=False, channels_last=False)
    assert [r.s_local for r in _scored(big, paths)] == pytest.approx(per.mean(1).tolist(), rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("shape,sigma", [((2, 1, 37, 50), 4.0), ((1, 1, 9, 6), 3.0), ((1, 2, 20, 20), 0.7)])
def test_gaussian_smooth_equals_scipy(shape, sigma):
    ndimage = pytest.importorskip("scipy.ndimage")
    m = torch.rand(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = gaussian_smooth(m, sigma).numpy()
    for n in range(shape[0]):
        for c in range(shape[1]):
            want = ndimage.gaussian_filter(m[n, c].numpy(), sigma, mode="reflect", truncate=4.0)
            np.testing.assert_allclose(got[n, c], want, rtol=1e-10, atol=1e-12)


def test_gaussian_smooth_by_hand():
    # a 2-D convolution with the normalised 1-D kernel's outer product, symmetric padding
    m = torch.rand(1, 1, 12, 15, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sigma, r = 1.5, int(4 * 1.5 + 0.5)
    t = np.arange(-r, r + 1)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    k /= k.sum()
    padded = np.pad(m[0, 0].numpy(), r, mode="symmetric")
    want = F.conv2d(torch.from_numpy(padded)[None, None], torch.from_numpy(np.outer(k, k))[None, None])
    np.testing.assert_allclose(gaussian_smooth(m, sigma).numpy(), want.numpy(), rtol=1e-10, atol=1e-12)


def test_map_sigma_smooths_maps_at_original_size(trained):
    paths = trained["test"][:2]
    plain = _scored(Scorer(trained["model"], device="cpu"), paths)
    smooth = Scorer(trained["model"], device="cpu", map_sigma=4.0)
    for a, b in zip(plain, _scored(smooth, paths), strict=True):
        assert b.map.shape == a.map.shape == (80, 80)
        want = gaussian_smooth(torch.from_numpy(a.map)[None, None], 4.0)[0, 0].numpy()
        np.testing.assert_allclose(b.map, want, rtol=1e-5, atol=1e-6)
        assert b.score == a.score  # image scores do not use the map
    # the heat-map scale and pixel threshold are calibrated on smoothed maps
    assert smooth.calibration(recompute=True)["map_high"] <= Scorer(trained["model"], device="cpu").calibration()[
        "map_high"
    ] + 1e-6


def _kind_maps(scorer, paths):
    # each model's map at model resolution, through the Scorer's own per-model path
    out = {"global": [], "local": []}
    with torch.inference_mode():
        for batch in scorer.loader(paths):
            x = batch.images.float()
            maps = scorer.module.component_maps(scorer.module.terms(x), x.shape[-2:])
            out["global"].append(maps["global"].double())
            out["local"].append(maps["local"].double())
    return {k: torch.cat(v) for k, v in out.items()}


def test_map_norm_standardises_each_map_by_validation_pixels(trained):
    model = trained["model"]
    s = Scorer(model, device="cpu", map_norm="standard")
    cal = s.calibration(recompute=True)
    val = _kind_maps(s, validation_files(model))
    for kind in ("global", "local"):
        v = val[kind].flatten()
        assert cal["map_stats"][kind]["mean"] == pytest.approx(float(v.mean()), rel=1e-9)
        assert cal["map_stats"][kind]["std"] == pytest.approx(float(v.std()), rel=1e-6)  # ddof 1
    paths = trained["test"][:3]
    x = next(iter(s.loader(paths))).images.float()
    parts = _kind_maps(s, paths)
    st = cal["map_stats"]
    want = (parts["global"] - st["global"]["mean"]) / st["global"]["std"] + (
        parts["local"] - st["local"]["mean"]
    ) / st["local"]["std"]
    got = s.score_batch(x).maps.double()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # image scores do not use the maps; the heat-map scale is calibrated on the combined maps
    assert s.score_batch(x).score.tolist() == Scorer(model, device="cpu").score_batch(x).score.tolist()
    assert cal["map_low"] == pytest.approx(float(np.median(torch.cat([(val["global"] - st["global"]["mean"])
                                           / st["global"]["std"] + (val["local"] - st["local"]["mean"])
                                           / st["local"]["std"]]).numpy())), abs=0.2)  # fmt: skip


def test_map_term_abs_is_the_absolute_error(trained):
    paths = trained["test"][:3]
    s = Scorer(trained["model"], device="cpu", map_term="abs", fold_bn=False, channels_last=False)
    x = next(iter(s.loader(paths))).images.float()
    with torch.inference_mode():
        g = s.global_model
        want_g = (x - g(x)[1]).abs().mean(1, keepdim=True) / g.config.data_range
        got_g = s.module.terms(x)["global"].map
    torch.testing.assert_close(got_g, want_g, rtol=1e-5, atol=1e-6)
    # scores are unchanged: only the map is another
    plain = Scorer(trained["model"], device="cpu", fold_bn=False, channels_last=False)
    torch.testing.assert_close(s.score_batch(x).score, plain.score_batch(x).score, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(s.score_batch(x).maps, plain.score_batch(x).maps)


def test_threshold_cache_is_keyed_by_scoring(trained):
    model = trained["model"]
    t_sum = Scorer(model, device="cpu").calibration(recompute=True)["threshold"]
    t_std = Scorer(model, device="cpu", score_norm="standard").threshold
    assert json.loads((model / THRESHOLD_JSON).read_text())["scoring"]["score_norm"] == "standard"
    assert t_std != t_sum
    assert Scorer(model, device="cpu").threshold == pytest.approx(t_sum)
    # a cache from before the scoring options (no "scoring" record) holds the paper's sum
    d = json.loads((model / THRESHOLD_JSON).read_text())
    d.pop("scoring")
    d.pop("term_stats")
    d["threshold"] = 123.0
    (model / THRESHOLD_JSON).write_text(json.dumps(d))
    assert Scorer(model, device="cpu").threshold == 123.0
    assert Scorer(model, device="cpu", score_norm="standard").threshold == pytest.approx(t_std)


def test_damaged_term_stats_are_recalibrated(trained):
    model = trained["model"]
    good = Scorer(model, device="cpu", score_norm="standard").calibration(recompute=True)
    d = json.loads((model / THRESHOLD_JSON).read_text())
    d["term_stats"]["local"]["std"] = 0.0
    (model / THRESHOLD_JSON).write_text(json.dumps(d))
    with pytest.warns(UserWarning, match="term_stats"):
        again = Scorer(model, device="cpu", score_norm="standard").calibration()
    assert again["term_stats"] == good["term_stats"]


@pytest.mark.parametrize("kw", [dict(score_norm="zscore"), dict(map_norm="max"), dict(map_term="ssim"),
                                dict(latent_weight=-1.0),
                                dict(local_topk=0), dict(map_sigma=float("nan"))])  # fmt: skip
def test_bad_options_are_refused(trained, kw):
    with pytest.raises(ValueError):
        Scorer(trained["model"], device="cpu", **kw)


def test_eval_flags_reach_the_scorer(trained, tmp_path, capsys):
    out = tmp_path / "rep"
    rc = main(["eval", "--model", str(trained["model"]), "--data", str(trained["data"]), "--category", CAT,
               "--out", str(out), "--no-progress", "--device", "cpu", "--workers", "0", "--score-norm", "standard",
               "--latent-weight", "0.5", "--local-topk", "2", "--map-sigma", "2"])  # fmt: skip
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["scoring"] == {"score_norm": "standard", "latent_weight": 0.5, "local_topk": 2, "map_sigma": 2.0,
            "map_components": "all",
                              "map_norm": "sum", "map_term": "lr", "map_position": False,
                              "image_score": "terms", "residual_sigma": 0.0, "excess_quantile": 0.95,
                         "recon_colour": "rgb"}  # fmt: skip  (auto decides nothing for the lr map)
    s = Scorer(trained["model"], device="cpu", score_norm="standard", latent_weight=0.5, local_topk=2, map_sigma=2)
    want = {r.path: r.score for r in _scored(s, trained["test"])}
    for row in rep["images"]:
        assert row["score"] == pytest.approx(want[row["path"]], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("flag", [["--score-norm", "mean"], ["--local-topk", "0"], ["--map-sigma", "-1"],
                                  ["--latent-weight", "inf"]])  # fmt: skip
def test_bad_flags_exit_2(trained, tmp_path, flag):
    with pytest.raises(SystemExit) as e:
        main(["score", "--model", str(trained["model"]), "--input", str(trained["data"]), "--out", str(tmp_path),
              *flag])  # fmt: skip
    assert e.value.code == 2
