"""Network precision for scoring (fp32 / bf16 / auto with its guard) and compiled networks."""

import json
import shutil

import numpy as np
import pytest
import torch
from _cli import tiny_trained

import igd_fast.score.guard as guard
import igd_fast.score.precision as precision
import igd_fast.score.scorer as scorer_mod
from igd_fast.checkpoint import validation_files
from igd_fast.cli import main
from igd_fast.score import Scorer
from igd_fast.score.precision import PrecisionError

CAT = "synth"
HAS_BF16 = precision.bf16_support(torch.device("cpu")) is None
needs_bf16 = pytest.mark.skipif(not HAS_BF16, reason="this CPU has no native bf16")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return tiny_trained(tmp_path_factory.mktemp("igd_precision"), CAT, n_train=16, seed=3)


@pytest.fixture
def no_bf16(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda cpuinfo="/proc/cpuinfo": [])


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text("flags\t\t: fpu avx512f avx512_bf16 sse\nflags : amx_bf16 amx_tile\n")
    assert precision.cpu_bf16_flags(f) == ["avx512_bf16", "amx_bf16"]
    f.write_text("flags\t\t: fpu avx512f avx512_vnni\n")
    assert precision.cpu_bf16_flags(f) == []
    assert precision.cpu_bf16_flags(tmp_path / "missing") == []


@pytest.mark.parametrize("native", [True, False])
def test_training_bf16_defaults_to_where_the_cpu_has_it(monkeypatch, native):
    """The defect model's default and a preset's ``amp``: bf16 where native, fp32 elsewhere (with
    the reason); an explicit --amp / --no-amp as given."""
    from igd_fast.train.defect_run import use_bf16
    from igd_fast.train.setup import TrainOptions

    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda cpuinfo="/proc/cpuinfo": ["avx512_bf16"] if native else [])
    cpu = torch.device("cpu")
    on, why = precision.bf16_where_native(None, cpu)
    assert on is native and (why is None) is native
    assert precision.bf16_where_native(True, cpu) == (True, None)
    assert precision.bf16_where_native(False, cpu) == (False, None)
    assert use_bf16(TrainOptions(), cpu) is native
    assert use_bf16(TrainOptions(amp=False), cpu) is False


def test_guard_checks_count_flips_and_errors():
    g = guard.PrecisionGuard()
    t = guard.Tally(threshold=1.0, pixel_threshold=0.5, margin=0.4, map_tol=g.max_map_err)
    t.add("normal", [0.0, 0.5, 0.9], [0.0, 0.52, 0.9], None, None)
    t.add("synthetic", [2.0, 0.99], [2.1, 1.01], None, None)  # the second defect's label flips
    v = t.values(g)
    std = np.std([0.0, 0.5, 0.9], ddof=1)
    assert v["image_flips"] == 1 and v["score_err"] == pytest.approx(0.02 / std)
    assert v["synthetic_score_err"] == pytest.approx(0.1 / std) and v["pixels"] == 0
    assert v["checks"] == {"image_flips": False, "score_err": True} and v["passed"] is False
    a = torch.zeros(1, 1, 10, 10)
    b = a.clone()
    b[0, 0, 0, 0] = 0.6  # crosses the pixel threshold and errs by 0.6 > 0.1 x margin 0.4
    b[0, 0, 1, 0] = 0.03  # within 0.1 x margin
    t = guard.Tally(threshold=1.0, pixel_threshold=0.5, margin=0.4, map_tol=g.max_map_err)
    t.add("normal", [0.0, 0.1], [0.0, 0.1], [a, a], [b, a])
    v = t.values(g)
    assert v["pixels"] == 200 and v["pixel_flips"] == 1 / 200 and v["map_err_share"] == 1 / 200
    assert v["max_map_err"] == pytest.approx(0.6 / 0.4)
    assert v["checks"] == {"image_flips": True, "score_err": True, "pixel_flips": False, "map_err_share": False}
    # NaN from bf16 is never within tolerance: a flipped label (NaN is anomalous) and an undefined error
    t = guard.Tally(threshold=1.0, pixel_threshold=0.5, margin=0.4, map_tol=g.max_map_err)
    t.add("normal", [0.0, 0.1], [float("nan"), 0.1], None, None)
    v = t.values(g)
    assert v["image_flips"] == 1 and v["score_err"] is None and not v["passed"]


def test_fp32_is_the_default_and_unchanged(trained):
    s = Scorer(trained["model"], device="cpu")
    assert s.precision == {"global": "fp32", "local": "fp32"}
    assert s.precision_record == {"requested": "fp32", "models": {"global": "fp32", "local": "fp32"}}


@pytest.fixture
def bf16_anywhere(monkeypatch):
    # the guard's decision path on any CPU: autocast runs bf16 without native instructions too
    monkeypatch.setattr(precision, "bf16_support", lambda device: None)


@pytest.fixture
def model_copy(trained, tmp_path):
    # auto writes its verdict into threshold.json: each test gets its own copy of the model
    shutil.copytree(trained["model"], tmp_path / "model")
    return tmp_path / "model"


# the tiny one-epoch model keeps every image decision in bf16 but its maps are rough (pixel
# checks fail, ~0.1 % flips): pixel checks are loosened where a passing guard is wanted
PIXELS_LOOSE = guard.PrecisionGuard(max_pixel_flips=1.0, map_err_share=1.0)


def test_guard_values_are_the_bf16_vs_fp32_differences(bf16_anywhere, trained, model_copy):
    # the guard's image numbers, recomputed from two plain scorers on the validation normals
    s = Scorer(model_copy, device="cpu", precision="auto")
    s.calibration()
    v = s.precision_record["guard_values"]
    files = validation_files(model_copy)
    fp, bf = (Scorer(trained["model"], device="cpu", precision=p) for p in ("fp32", "bf16"))
    s32, s16 = (np.array([r.score for r in sc.score_paths(files, want_maps=False)]) for sc in (fp, bf))
    assert v["n_normal"] == len(files) and v["n_synthetic"] == len(s.calibration()["synthetic_scores"])
    assert v["normal_score_std"] == pytest.approx(s32.std(ddof=1), rel=1e-6)
    assert v["score_err"] == pytest.approx(np.abs(s16 - s32).max() / s32.std(ddof=1), rel=1e-4)
    assert v["score_err"] > 0  # bf16 really ran: not bit-equal to fp32
    assert 0 < v["pixel_flips"] < 0.05 and v["pixels"] > 0
    assert v["passed"] == all(v["checks"].values())


def test_auto_keeps_bf16_where_the_guard_passes_and_decides_as_fp32(bf16_anywhere, trained, model_copy):
    s = Scorer(model_copy, device="cpu", precision="auto", guard=PIXELS_LOOSE)
    s.calibration()
    rec = s.precision_record
    assert rec["guard_values"]["passed"] and rec["reason"] == "guard passed"
    assert s.precision == {"global": "bf16", "local": "bf16"} and rec["calibrated_in"] == "fp32"
    fp = Scorer(model_copy, device="cpu")
    assert s.threshold == fp.threshold and s.pixel_threshold == fp.pixel_threshold  # the fp32 calibration
    # bf16 networks score ...
    ref = [r.score for r in Scorer(trained["model"], device="cpu", precision="bf16").score_paths(trained["test"])]
    assert [r.score for r in s.score_paths(trained["test"])] == ref
    # ... and, where the guard passed, decide the validation normals as fp32 does
    files = validation_files(model_copy)
    assert [p.pred_label for p in s.predict(files)] == [p.pred_label for p in fp.predict(files)]


class _Scaled(torch.nn.Module):
    def __init__(self, inner, k):
        super().__init__()
        self.inner, self.k = inner, k

    def forward(self, x):
        return self.inner(x) * self.k


@pytest.mark.parametrize("how", ["tolerance 0", "perturbed bf16"])
def test_auto_falls_back_to_fp32_when_the_guard_fails(bf16_anywhere, trained, model_copy, monkeypatch, how):
    g = guard.PrecisionGuard(max_score_err=0.0) if how == "tolerance 0" else PIXELS_LOOSE
    if how == "perturbed bf16":
        plain = precision.bf16_networks

        def perturbed(model):
            out = plain(model)
            out.decoder = _Scaled(out.decoder, 0.0)  # a bf16 path that loses the reconstruction
            return out

        monkeypatch.setattr(precision, "bf16_networks", perturbed)
    s = Scorer(model_copy, device="cpu", precision="auto", guard=g)
    s.calibration()
    rec = s.precision_record
    assert s.precision == {"global": "fp32", "local": "fp32"} and not rec["guard_values"]["passed"]
    assert rec["reason"].startswith("guard failed: ") and "score_err" in rec["reason"]
    if how == "perturbed bf16":
        assert rec["guard_values"]["image_flips"] > 0
    # the fallback scores exactly as plain fp32
    ref = [r.score for r in Scorer(trained["model"], device="cpu").score_paths(trained["test"])]
    assert [r.score for r in s.score_paths(trained["test"])] == ref


def test_the_verdict_round_trips_through_threshold_json(bf16_anywhere, model_copy, monkeypatch):
    s = Scorer(model_copy, device="cpu", precision="auto", guard=PIXELS_LOOSE)
    s.calibration()
    saved = json.loads((model_copy / "threshold.json").read_text())
    assert saved["precision_guard"]["values"] == s.precision_record["guard_values"]
    assert saved["precision_guard"]["tolerances"] == PIXELS_LOOSE.record()
    assert "bf16" not in saved["scoring"]  # auto's bf16 keeps the fp32 calibration (cache key)

    def no_guard(*a, **k):
        raise AssertionError("the cached verdict should have been used")

    monkeypatch.setattr(scorer_mod, "measure", no_guard)
    again = Scorer(model_copy, device="cpu", precision="auto", guard=PIXELS_LOOSE)
    again.calibration()
    assert again.precision_record == s.precision_record and again.precision == {"global": "bf16", "local": "bf16"}
    # a plain fp32 scorer reuses the same calibration; other tolerances measure again
    assert Scorer(model_copy, device="cpu").calibration()["threshold"] == saved["threshold"]
    with pytest.raises(AssertionError, match="cached verdict"):
        Scorer(model_copy, device="cpu", precision="auto").calibration()
    # another process's record (cli: rank 0 calibrates) carries the decision with it
    other = Scorer(model_copy, device="cpu", precision="auto", guard=PIXELS_LOOSE)
    other.use_calibration(saved)
    assert other.precision == {"global": "bf16", "local": "bf16"}


@needs_bf16
def test_every_precision_scores_the_same_images_in_the_same_order(trained):
    paths = trained["test"][::-1] + [trained["data"] / "not_there.png"]
    runs = {}
    for p in ("fp32", "bf16", "auto"):
        runs[p] = list(Scorer(trained["model"], device="cpu", precision=p).score_paths(paths))
    order = [(r.index, r.path, type(r).__name__) for r in runs["fp32"]]
    assert order[-1][2] == "Failure" and len(order) == len(paths)
    ref = np.array([r.score for r in runs["fp32"][:-1]])
    for p, res in runs.items():
        assert [(r.index, r.path, type(r).__name__) for r in res] == order, p
        sc = np.array([r.score for r in res[:-1]])
        np.testing.assert_allclose(sc, ref, rtol=0.05, atol=1e-3)  # bf16: the same scores to a few %
        assert res[0].map.shape == runs["fp32"][0].map.shape
    assert not np.array_equal([r.score for r in runs["bf16"][:-1]], ref)  # bf16 did run


@needs_bf16
def test_bf16_calibrates_its_own_threshold(trained):
    fp = Scorer(trained["model"], device="cpu").calibration()
    bf = Scorer(trained["model"], device="cpu", precision="bf16").calibration()
    assert bf["scoring"]["bf16"] == ["global", "local"] and "bf16" not in fp["scoring"]
    assert bf["validation_scores"] != fp["validation_scores"]


def test_bf16_without_hardware_is_an_error_and_auto_falls_back(trained, no_bf16):
    with pytest.raises(PrecisionError, match="avx512_bf16"):
        Scorer(trained["model"], device="cpu", precision="bf16")
    s = Scorer(trained["model"], device="cpu", precision="auto")
    assert s.precision == {"global": "fp32", "local": "fp32"}
    assert "avx512_bf16" in s.precision_record["reason"] and "guard_values" not in s.precision_record


def test_cli_bf16_without_hardware_exits_2(trained, no_bf16, tmp_path, capsys):
    code = main(["score", "--model", str(trained["model"]), "--input", str(trained["test"][0]),
                 "--out", str(tmp_path / "o"), "--precision", "bf16", "--no-progress", "--device", "cpu"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "--precision bf16" in err and "avx512_bf16" in err
    code = main(["eval", "--model", str(trained["model"]), "--data", str(trained["data"]), "--category", CAT,
                 "--out", str(tmp_path / "e"), "--precision", "bf16", "--no-progress", "--device", "cpu"])  # fmt: skip
    assert code == 2 and "--precision bf16" in capsys.readouterr().err


@needs_bf16
def test_cli_records_the_decision(trained, model_copy, tmp_path):
    out = tmp_path / "s"
    code = main(["score", "--model", str(model_copy), "--input", str(trained["data"] / CAT / "test"),
                 "--out", str(out), "--precision", "auto", "--no-progress", "--device", "cpu"])  # fmt: skip
    assert code == 0
    rec = json.loads((out / "summary.json").read_text())["precision"]
    v = rec["guard_values"]
    assert rec["requested"] == "auto" and v["checks"]["image_flips"] == (v["image_flips"] == 0)
    assert rec["models"] == dict.fromkeys(("global", "local"), "bf16" if v["passed"] else "fp32")
    assert rec["guard"] == guard.PrecisionGuard().record()
    out = tmp_path / "e"
    code = main(["eval", "--model", str(trained["model"]), "--data", str(trained["data"]), "--category", CAT,
                 "--out", str(out), "--precision", "bf16", "--no-progress", "--device", "cpu"])  # fmt: skip
    assert code == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["precision"]["models"] == {"global": "bf16", "local": "bf16"} and rep["compiled"] is False


def test_compiled_and_eager_scoring_agree(trained):
    pytest.importorskip("torch._inductor")
    paths = trained["test"][:3]
    eager = list(Scorer(trained["model"], device="cpu", batch_size=3).score_paths(paths))
    comp = Scorer(trained["model"], device="cpu", batch_size=3, compile=True)
    assert comp.compiled
    got = list(comp.score_paths(paths))
    assert [r.path for r in got] == [r.path for r in eager]
    np.testing.assert_allclose([r.score for r in got], [r.score for r in eager], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got[0].map, eager[0].map, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("map_term", ["lr", "abs", "maha"])
def test_auto_works_with_every_map_term(trained, tmp_path, monkeypatch, map_term):
    # the guard runs here whether or not this CPU has bf16 (autocast emulates it): the decision
    # path is what is tested, on a copy (the verdict is written into threshold.json)
    monkeypatch.setattr(precision, "bf16_support", lambda device: None)
    model = tmp_path / "model"
    shutil.copytree(trained["model"], model)
    out = tmp_path / "s"
    code = main(["score", "--model", str(model), "--input", str(trained["test"][0]), "--out", str(out),
                 "--precision", "auto", "--map-term", map_term, "--no-overlays", "--no-progress",
                 "--device", "cpu"])  # fmt: skip
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    rec = summary["precision"]
    assert rec["requested"] == "auto" and set(rec["guard_values"]["checks"]) >= {"image_flips", "pixel_flips"}
    assert rec["models"] == dict.fromkeys(("global", "local"), "bf16" if rec["guard_values"]["passed"] else "fp32")
    assert summary["scoring"]["map_term"] == map_term and summary["n_scored"] == 1


def test_auto_without_validation_images_scores_in_fp32(bf16_anywhere, trained, model_copy):
    # --threshold given and nothing to calibrate on: auto cannot guard, so fp32, said why
    run = json.loads((model_copy / "run.json").read_text())
    (model_copy / "run.json").write_text(json.dumps({**run, "val_files": []}))
    s = Scorer(model_copy, device="cpu", precision="auto")
    got = [r.score for r in s.score_paths(trained["test"][:2])]
    assert s.precision == {"global": "fp32", "local": "fp32"}
    assert "no calibration for the guard" in s.precision_record["reason"]
    assert got == [r.score for r in Scorer(trained["model"], device="cpu").score_paths(trained["test"][:2])]
