"""score_norm="max" and image_score="component-excess" (the cpu-texture recipe's scoring), checked
against each component scored alone and numpy: the images are at the models' 64², so each
component's measured map at the scoring size is the map a one-component scoring returns."""

import json

import numpy as np
import pytest
from _cli import tiny_trained

from igd_fast.checkpoint import validation_files
from igd_fast.cli import main
from igd_fast.score import Scorer

CAT = "synth"
Q = 0.9


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    # images at the models' own 64²: each component's map at the scoring size is the image's map
    return tiny_trained(tmp_path_factory.mktemp("igd_components"), CAT, n_train=12, seed=3, size=64)


def _z(values: np.ndarray, ref: np.ndarray) -> np.ndarray:
    sd = ref.std(ddof=1)
    return (values - ref.mean()) / (sd if sd > 0 else 1.0)


def _alone(model, kind: str, files) -> list[np.ndarray]:
    s = Scorer(model, device="cpu", map_term="maha", map_components=kind)
    return [r.map.astype(np.float64) for r in s.score_paths(files)]


@pytest.mark.parametrize("norm", ["max", "standard"])
def test_component_excess_scores_each_model_by_its_own_map(trained, norm):
    model, test = trained["model"], trained["test"]
    val = validation_files(model)
    s = Scorer(model, device="cpu", map_term="maha", map_norm="standard", image_score="component-excess",
               score_norm=norm, excess_quantile=Q)  # fmt: skip
    cal = s.calibration(recompute=True)
    got = list(s.score_paths(test))
    zs, maps = [], {}
    for kind in ("global", "local"):
        v, t = _alone(model, kind, val), _alone(model, kind, test)
        level = np.quantile(np.concatenate([m.ravel() for m in v]).astype(np.float32).astype(np.float64), Q)
        assert cal["component_levels"][kind] == pytest.approx(level, rel=1e-6)
        ev = np.array([np.clip(m - level, 0, None).mean() for m in v])
        et = np.array([np.clip(m - level, 0, None).mean() for m in t])
        assert cal["term_stats"][kind]["mean"] == pytest.approx(ev.mean(), rel=1e-5, abs=1e-9)
        np.testing.assert_allclose([r.terms[kind] for r in got], et, rtol=1e-5, atol=1e-8)
        zs.append(_z(et, ev))
        pix = np.concatenate([m.ravel() for m in v])
        maps[kind] = [(m - pix.mean()) / pix.std(ddof=1) for m in t]
    want = np.max(zs, axis=0) if norm == "max" else np.sum(zs, axis=0)
    np.testing.assert_allclose([r.score for r in got], want, rtol=1e-4, atol=1e-5)
    for j, r in enumerate(got):  # the map: the two maps standardised and summed
        np.testing.assert_allclose(r.map, maps["global"][j] + maps["local"][j], rtol=1e-4, atol=1e-4)
    # without maps asked for, the same scores (the maps are still measured for the excess)
    assert [r.score for r in s.score_paths(test, want_maps=False)] == [r.score for r in got]


def test_score_norm_max_is_the_largest_standardised_term(trained):
    model, test = trained["model"], trained["test"]
    s = Scorer(model, device="cpu", score_norm="max")
    st = s.calibration(recompute=True)["term_stats"]
    for r in s.score_paths(test):
        z = [(r.terms[k] - st[k]["mean"]) / st[k]["std"] for k in ("global", "local")]
        assert r.score == pytest.approx(max(z), rel=1e-5, abs=1e-6)


def test_component_excess_needs_every_map_and_keys_the_cache(trained):
    model = trained["model"]
    with pytest.raises(ValueError, match="map_components all"):
        Scorer(model, device="cpu", image_score="component-excess", map_components="local")
    Scorer(model, device="cpu", map_term="maha", image_score="map-excess").calibration(recompute=True)
    cal = Scorer(model, device="cpu", map_term="maha", image_score="component-excess").calibration()
    assert set(cal["component_levels"]) == {"global", "local"}
    d = json.loads((model / "threshold.json").read_text())
    assert d["scoring"]["image_score"] == "component-excess" and "component_levels" in d


def test_eval_takes_the_new_choices(trained, tmp_path):
    out = tmp_path / "ev"
    rc = main(["eval", "--model", str(trained["model"]), "--data", str(trained["data"]), "--category", CAT,
               "--out", str(out), "--map-term", "maha", "--image-score", "component-excess", "--score-norm", "max",
               "--no-progress", "--device", "cpu"])  # fmt: skip
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    assert (rep["scoring"]["image_score"], rep["scoring"]["score_norm"]) == ("component-excess", "max")
    assert np.isfinite(rep["image_AUROC"])
