"""``igd-fast export``: the scoring pipeline over raw images, in onnxruntime and OpenVINO against the Scorer."""

import json

import numpy as np
import pytest
import torch
from _cli import train_tiny_pair

from igd_fast.cli import main
from igd_fast.cli.presets import RECIPES
from igd_fast.data import make_synthetic_mvtec
from igd_fast.export.onnx import record_path
from igd_fast.score import Scorer

onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

CAT = "synth"


@pytest.fixture(scope="module")
def model(tmp_path_factory):

    root = tmp_path_factory.mktemp("igd_export")
    make_synthetic_mvtec(root / "data", CAT, n_train=12, n_test_good=2, n_test_bad=2, size=64, seed=2)
    train_tiny_pair(root / "data", CAT, root / "model")
    return root / "model"


# every stage of the scoring module, each with its fitted statistics
EVERY_STAGE = dict(map_term="maha", residual_sigma=1.0, map_sigma=2.0, map_position=True, image_score="map-excess",
                   score_norm="standard", map_norm="standard", local_topk=2, latent_weight=0.5)  # fmt: skip


def _test_images(model, n=3) -> list[np.ndarray]:
    """Raw uint8 H×W×3 test images (64×64, the model size)."""
    from PIL import Image

    files = sorted((model.parent / "data" / CAT / "test").rglob("*.png"))[:n]
    return [np.asarray(Image.open(f).convert("RGB")) for f in files]


def _raw(images) -> torch.Tensor:
    """The exported graph's input: N×3×H×W RGB in [0, 1]."""
    return torch.from_numpy(np.stack(images).transpose(0, 3, 1, 2).astype(np.float32) / 255.0)


@pytest.mark.parametrize("options", [{}, EVERY_STAGE, RECIPES["cpu-texture"]], ids=["paper", "every-stage", "texture"])
def test_pipeline_module_equals_scorer(model, options):
    from igd_fast.export import ScoringPipeline

    scorer = Scorer(model, device="cpu", backend="torch", channels_last=False, **options)
    pipe = ScoringPipeline(scorer)
    # the graph is the scorer's own module: its networks and statistics, on the reference ops
    assert all(pipe.module.components[k].model is scorer.component(k).model for k in scorer.kinds)
    assert pipe.module.stats is scorer.module.stats and pipe.post is scorer.post_processor
    images = _test_images(model)
    with torch.no_grad():
        p, label, amap01, mask, score, amap = pipe(_raw(images))
    refs = scorer.predict(images)  # the same pixels, read as the Scorer reads them
    ref_maps = torch.from_numpy(np.stack([r.anomaly_map for r in refs]))[:, None]
    want = torch.tensor([r.score for r in refs], dtype=torch.float64)
    torch.testing.assert_close(score.double(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(amap, ref_maps, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(p.numpy(), [r.pred_score for r in refs], atol=1e-6)
    assert label.tolist() == [r.pred_label for r in refs]
    torch.testing.assert_close(amap01, scorer.post_processor.map_01(ref_maps), atol=1e-5, rtol=0)
    assert (mask == (ref_maps > scorer.pixel_threshold)).float().mean() > 0.999


@pytest.mark.parametrize("keep", ["global.pt", "local.pt"])
def test_pipeline_module_of_a_single_model_dir(model, tmp_path, keep):
    import shutil

    from igd_fast.export import ScoringPipeline

    one = tmp_path / "one"
    shutil.copytree(model, one)
    (one / ({"global.pt", "local.pt"} - {keep}).pop()).unlink()
    (one / "threshold.json").unlink(missing_ok=True)
    scorer = Scorer(one, device="cpu", backend="torch", channels_last=False)
    images = list(np.random.default_rng(1).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8))
    with torch.no_grad():
        out = ScoringPipeline(scorer)(_raw(images))
    refs = scorer.predict(images)
    want = torch.tensor([r.score for r in refs], dtype=torch.float64)
    torch.testing.assert_close(out[4].double(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[5], torch.from_numpy(np.stack([r.anomaly_map for r in refs]))[:, None],
                               rtol=1e-5, atol=1e-5)  # fmt: skip


@pytest.mark.slow
def test_export_onnx_parity_batch_1_and_5(model, tmp_path):
    from igd_fast.export.onnx import record_path
    from igd_fast.export.pipeline import ONNX_OUTPUTS

    out = tmp_path / "deploy" / "igd.onnx"
    assert main(["export", "--model", str(model), "--format", "onnx", "--out", str(out)]) == 0
    meta = json.loads(record_path(out).read_text())
    assert meta["outputs"] == ONNX_OUTPUTS
    diff = meta["max_abs_diff"]  # scores absolute, the map as a fraction of the heat-map range
    assert diff["pred_score"] < 1e-4 and diff["score"] < 1e-4 and diff["anomaly_map"] < 1e-3
    sess = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input"]
    # the fast kernels' Scorer (the default backend), not the reference the graph was built from
    scorer = Scorer(model, device="cpu")
    rng = np.random.default_rng(5)
    for n in (1, 5):
        images = list(rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8))
        got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": _raw(images).numpy()}),
                       strict=True))  # fmt: skip
        refs = scorer.predict(images)
        assert got["pred_score"].shape == (n,) and got["anomaly_map"].shape == (n, 1, 64, 64)
        np.testing.assert_allclose(got["pred_score"], [r.pred_score for r in refs], atol=1e-4)
        np.testing.assert_allclose(got["score"], [r.score for r in refs], atol=1e-4)
        want = scorer.post_processor.map_01(torch.from_numpy(np.stack([r.anomaly_map for r in refs]))[:, None])
        np.testing.assert_allclose(got["anomaly_map"], want.numpy(), atol=1e-4)
        assert got["pred_label"].tolist() == [r.pred_label for r in refs]


def test_the_texture_recipe_exports_as_it_scores(model, tmp_path):
    """Each model's own map excess and the largest z-score (score_norm max) inside the graph."""
    import shutil

    from igd_fast.score.recipe import Recipe, write_model_recipe

    d = tmp_path / "model"
    shutil.copytree(model, d)
    (d / "threshold.json").unlink(missing_ok=True)
    write_model_recipe(d, Recipe.resolve(preset=RECIPES["cpu-texture"]), "cpu-texture")
    out = tmp_path / "t.onnx"
    assert main(["export", "--model", str(d), "--out", str(out)]) == 0
    sess = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    scorer = Scorer(d, device="cpu")
    assert scorer.recipe["image_score"] == "component-excess"
    images = list(np.random.default_rng(6).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8))
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": _raw(images).numpy()}),
                   strict=True))  # fmt: skip
    refs = scorer.predict(images)
    np.testing.assert_allclose(got["score"], [r.score for r in refs], rtol=1e-4, atol=1e-4)
    assert got["pred_label"].tolist() == [r.pred_label for r in refs]


def test_export_errors_exit_2(model, tmp_path, capsys, monkeypatch):
    assert main(["export", "--model", str(tmp_path / "none"), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "--model" in capsys.readouterr().err
    import igd_fast.export as ex

    monkeypatch.setattr(ex, "missing_packages", lambda check=True, fmt="onnx": ["onnxscript"])
    assert main(["export", "--model", str(model), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "igd_fast[export]" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["export", "--model", str(model), "--out", str(tmp_path / "m"), "--format", "tflite"])
    assert e.value.code == 2


@pytest.mark.slow
def test_export_openvino_parity_batch_1_and_5(model, tmp_path):
    pytest.importorskip("openvino")
    from igd_fast.export.onnx import record_path
    from igd_fast.export.openvino import openvino_runner

    out = tmp_path / "ov"
    assert main(["export", "--model", str(model), "--format", "openvino", "--out", f"{out}/"]) == 0
    xml = out / "model.xml"
    assert xml.is_file() and xml.with_suffix(".bin").is_file() and not list(out.glob(".igd_export.*"))
    assert json.loads(record_path(xml).read_text())["format"] == "openvino"
    run = openvino_runner(xml)
    scorer = Scorer(model, device="cpu")
    rng = np.random.default_rng(6)
    for n in (1, 5):
        images = list(rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8))
        got, refs = run(_raw(images).numpy()), scorer.predict(images)
        np.testing.assert_allclose(got["pred_score"], [r.pred_score for r in refs], atol=1e-4)
        np.testing.assert_allclose(got["anomaly_map_raw"], np.stack([r.anomaly_map for r in refs])[:, None],
                                   atol=1e-4 * scorer.post_processor.pixel_scale)  # fmt: skip


def _csv(path):
    import csv

    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_score_cli_with_an_exported_model_matches_the_scorer(model, tmp_path, runtime):
    """The exported file through the same CLI: same scores, labels and maps as the
    model directory, for the pair and for a global-only directory."""
    if runtime == "openvino":
        pytest.importorskip("openvino")
    import shutil

    inp = model.parent / "data" / CAT / "test"
    one = tmp_path / "global_only"
    shutil.copytree(model, one)
    (one / "local.pt").unlink()
    (one / "threshold.json").unlink(missing_ok=True)
    for mdir in (model, one):
        target = tmp_path / f"{mdir.name}_{runtime}" / ("model.xml" if runtime == "openvino" else "model.onnx")
        fmt = "openvino" if runtime == "openvino" else "onnx"
        assert main(["export", "--model", str(mdir), "--format", fmt, "--out", str(target)]) == 0
        rec = json.loads(record_path(target).read_text())
        if runtime == "openvino":
            import openvino as ov

            info = ov.Core().read_model(str(target)).get_rt_info()["model_info"]
            assert float(info["image_threshold"].astype(str)) == pytest.approx(rec["threshold"])
        common = ["--input", str(inp), "--workers", "0", "--no-progress", "--save-maps", "--batch-size", "3"]
        out_t, out_x = tmp_path / f"t_{mdir.name}", tmp_path / f"x_{mdir.name}_{runtime}"
        assert main(["score", "--model", str(mdir), "--out", str(out_t), *common]) == 0
        assert main(["score", "--runtime", runtime, "--model", str(target), "--out", str(out_x), *common]) == 0
        a, b = _csv(out_t / "scores.csv"), _csv(out_x / "scores.csv")
        assert [r["path"] for r in a] == [r["path"] for r in b] and len(a) == 4
        for ra, rb in zip(a, b, strict=True):
            assert float(rb["score"]) == pytest.approx(float(ra["score"]), abs=1e-4)
            assert float(rb["pred_score"]) == pytest.approx(float(ra["pred_score"]), abs=1e-4)
            assert rb["pred_label"] == ra["pred_label"]
        for f in (out_t / "maps").rglob("*.npy"):
            ma, mb = np.load(f), np.load(out_x / "maps" / f.relative_to(out_t / "maps"))
            assert np.abs(ma - mb).max() <= 1e-3 * (ma.max() - ma.min())


def test_score_cli_exported_model_errors(model, tmp_path, capsys):
    base = ["score", "--input", str(model.parent / "data" / CAT / "test"), "--out", str(tmp_path / "o")]
    assert main([*base, "--runtime", "onnxruntime", "--model", str(tmp_path / "none.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "bare.onnx").write_bytes(b"x")
    assert main([*base, "--runtime", "onnxruntime", "--model", str(tmp_path / "bare.onnx")]) == 2
    assert "export record" in capsys.readouterr().err


@pytest.mark.slow
def test_export_computes_the_model_recipe_and_records_it(model, tmp_path):
    """Exported with no scoring flags, the graph computes the model directory's recipe, and
    ``score --runtime onnxruntime`` gives what the model directory gives (images of the model size)."""
    import shutil

    from igd_fast.score.recipe import Recipe, write_model_recipe

    d = tmp_path / "model"
    shutil.copytree(model, d)
    write_model_recipe(d, Recipe.resolve(preset={k: v for k, v in EVERY_STAGE.items() if k != "map_position"}))
    target = tmp_path / "m.onnx"
    assert main(["export", "--model", str(d), "--out", str(target)]) == 0
    rec = json.loads(record_path(target).read_text())
    assert rec["recipe"]["values"]["image_score"] == "map-excess" and rec["recipe"]["sources"]["map_term"] == "model"
    assert rec["scoring"]["residual_sigma"] == 1.0 and rec["max_abs_diff"]["score"] < 1e-4
    assert rec["max_abs_diff"]["anomaly_map"] < 1e-3
    common = ["--input", str(model.parent / "data" / CAT / "test"), "--workers", "0", "--no-progress", "--no-overlays"]
    assert main(["score", "--model", str(d), "--out", str(tmp_path / "t"), *common]) == 0
    assert main(["score", "--runtime", "onnxruntime", "--model", str(target), "--out", str(tmp_path / "x"),
                 *common]) == 0  # fmt: skip
    a, b = _csv(tmp_path / "t" / "scores.csv"), _csv(tmp_path / "x" / "scores.csv")
    for ra, rb in zip(a, b, strict=True):
        assert float(rb["score"]) == pytest.approx(float(ra["score"]), rel=1e-4, abs=1e-4)
        assert rb["pred_label"] == ra["pred_label"]
    assert json.loads((tmp_path / "x" / "summary.json").read_text())["scoring"] == rec["scoring"]


def test_the_parity_check_measures_maps_relative_where_they_exceed_the_heat_map_range():
    """Float32 rounding is relative: a map 300× its heat-map range (a texture model's
    Mahalanobis map on random images) differs by 3e-6 of its value, not by 1e-3 of the range;
    within the range the difference stays measured in heat-map ranges."""
    from types import SimpleNamespace

    from igd_fast.export.onnx import compare

    post = SimpleNamespace(threshold=1.0, pixel_threshold=10.0, pixel_scale=20.0)
    ref = np.full((2, 4, 4), 5.0, np.float32)
    ref[0, 1, 1] = 6000.0
    preds = [SimpleNamespace(score=3.0, pred_score=0.9, pred_label=1, anomaly_map=m) for m in ref]
    got = {"pred_score": np.array([0.9, 0.9]), "score": np.array([3.0, 3.0]), "pred_label": np.array([1, 1]),
           "anomaly_map_raw": ref[:, None].copy(), "pred_mask": ref[:, None] > 10.0}  # fmt: skip
    got["anomaly_map_raw"][0, 0, 1, 1] += 0.02  # 3.3e-6 of the value, 1e-3 of the range
    assert compare(got, preds, post, 1e-4)["anomaly_map"] == pytest.approx(0.02 / 6000.0, rel=1e-3)
    got["anomaly_map_raw"][1, 0, 2, 2] += 0.04  # a value within the range: 2e-3 of the range
    assert compare(got, preds, post, 1e-4)["anomaly_map"] == pytest.approx(0.04 / 20.0, rel=1e-3)
