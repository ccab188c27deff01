"""Scorer, ``igd-fast score`` and ``igd-fast eval`` on generated data with a tiny trained model."""

import csv
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from _cli import tiny_trained, torchrun
from PIL import Image
from sklearn.metrics import precision_recall_curve, roc_auc_score

from igd_fast import recon_error_map, recon_loss
from igd_fast.cli import main
from igd_fast.data import load_image
from igd_fast.score import Failure, Scorer, conformal_threshold
from igd_fast.score.decide import PIXEL_MAX_FPR
from igd_fast.score.threshold import THRESHOLD_JSON, read_threshold

CAT = "synth"
SIZE = 64


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("igd_score")
    t = tiny_trained(root, CAT, n_train=12, seed=1)
    data, model = t["data"], t["model"]
    # an input folder with other sizes and modes than the training data
    inp = root / "input"
    (inp / "sub").mkdir(parents=True)
    for f in sorted((data / CAT / "test").rglob("*.png")):
        Image.open(f).save(inp / f"{f.parent.name}_{f.name}")
    rgb = np.asarray(Image.open(data / CAT / "test" / "good" / "000.png"))
    Image.fromarray(rgb).convert("L").resize((70, 50)).save(inp / "gray.png")
    Image.fromarray(rgb).convert("RGBA").resize((60, 90)).save(inp / "sub" / "rgba.png")
    Image.fromarray(rgb).save(inp / "good_000.jpg")  # same stem as good_000.png: outputs must not collide
    return {"root": root, "data": data, "model": model, "input": inp}


def _read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_scorer_composes_global_and_local_scores(trained):
    scorer = Scorer(trained["model"], device="cpu", batch_size=4)
    x = torch.stack([load_image(p, SIZE) for p in sorted((trained["data"] / CAT / "test").rglob("*.png"))[:3]])
    out = scorer.score_batch(x)
    g, loc = scorer.global_model, scorer.local_model
    with torch.no_grad():
        z, xh = g(x)
        s_g = recon_loss(x, xh, g.config.rho, g.config.msssim(), "none") + g.descriptor.l_h(z)
        map_g = recon_error_map(x, xh, g.config.rho, g.config.msssim())
        # local: every 32×32 patch at stride 16 (64² -> 3×3 grid), cut out by hand
        starts = [(r, c) for r in (0, 16, 32) for c in (0, 16, 32)]
        p = torch.cat([x[:, :, r : r + 32, c : c + 32] for r, c in starts])  # patch-major: 9N
        zp, ph = loc(p)
        cfg = loc.config.msssim()
        s_p = recon_loss(p, ph, loc.config.rho, cfg, "none") + loc.descriptor.l_h(zp)
        s_l = s_p.view(len(starts), -1).amax(0)
        pm = recon_error_map(p, ph, loc.config.rho, cfg).view(len(starts), x.shape[0], 1, 32, 32)
        map_l, cover = torch.zeros_like(map_g), torch.zeros_like(map_g)
        for k, (r, c) in enumerate(starts):
            map_l[:, :, r : r + 32, c : c + 32] += pm[k]
            cover[:, :, r : r + 32, c : c + 32] += 1
    torch.testing.assert_close(out.s_global, s_g, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.s_local, s_l, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.score, s_g + s_l, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.maps, map_g + map_l / cover, rtol=1e-4, atol=1e-5)


def test_maps_come_back_at_original_resolution_and_failures_are_reported(trained, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    files = [trained["input"] / "gray.png", bad, trained["input"] / "sub" / "rgba.png"]
    scorer = Scorer(trained["model"], device="cpu", batch_size=2)
    res = list(scorer.score_paths(files))
    # one result per file, in input order (a failure does not jump ahead of its batch)
    assert [type(r).__name__ for r in res] == ["ScoredImage", "Failure", "ScoredImage"]
    assert [r.path for r in res] == [str(f) for f in files]
    by_path = {r.path: r for r in res}
    assert isinstance(by_path[str(bad)], Failure) and "broken.png" in by_path[str(bad)].error
    assert by_path[str(files[0])].map.shape == (50, 70)
    assert by_path[str(files[2])].map.shape == (90, 60)
    assert all(np.isfinite(r.map).all() for r in res if not isinstance(r, Failure))
    assert scorer.images_per_second > 0


def test_conformal_threshold_rule():
    s = list(range(1, 101))  # 100 validation scores 1..100
    assert conformal_threshold(s, 0.05) == 96  # k = ceil(101 * 0.95) = 96
    assert conformal_threshold(s, 0.5) == 51
    assert conformal_threshold([3.0, 1.0, 2.0], 0.05) == 3.0  # too few: the maximum
    with pytest.raises(ValueError):
        conformal_threshold([], 0.05)


def test_threshold_is_calibrated_on_validation_normals_and_cached(trained, tmp_path):
    model = tmp_path / "model"  # a copy: this test rewrites threshold.json
    shutil.copytree(trained["model"], model)
    (model / THRESHOLD_JSON).unlink(missing_ok=True)
    scorer = Scorer(model, device="cpu")
    cal = scorer.calibration()
    run = json.loads((model / "run.json").read_text())
    assert cal["n_validation"] == len(run["val_files"]) == 3
    # n = 3: the larger of the Gaussian tail and the largest score (conformal at 2 alpha)
    val = list(cal["validation_scores"].values())
    tail = float(np.mean(val) + 1.6448536269514722 * np.std(val, ddof=1))
    assert cal["threshold"] == pytest.approx(max(max(val), tail))
    assert cal["map_low"] <= cal["map_high"]
    cached = json.loads((model / THRESHOLD_JSON).read_text())
    assert cached["threshold"] == cal["threshold"]
    # a second scorer reads the cache: poison it to prove no rescoring happened
    (model / THRESHOLD_JSON).write_text(json.dumps({**cached, "threshold": 123.0}))
    assert Scorer(model, device="cpu").threshold == 123.0
    # another alpha, or changed model weights, make the cache stale
    assert Scorer(model, device="cpu", alpha=0.5).calibration()["alpha"] == 0.5
    with open(model / "local.pt", "ab") as f:
        f.write(b"\0")
    assert read_threshold(model, 0.5) is None


def test_score_cli_outputs(trained, tmp_path):
    out = tmp_path / "out"
    code = main(
        [
            "score",
            "--model",
            str(trained["model"]),
            "--input",
            str(trained["input"]),
            "--output",
            str(out),
            "--save-maps",
            "--batch-size",
            "3",
            "--workers",
            "2",
        ]
    )
    assert code == 0
    rows = _read_csv(out / "scores.csv")
    assert list(rows[0]) == ["path", "score", "pred_score", "pred_label", "s_global", "s_local"]
    inputs = sorted(str(p) for p in trained["input"].rglob("*") if p.is_file())
    assert [r["path"] for r in rows] == inputs
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_scored"] == len(inputs) and summary["n_skipped"] == 0 and summary["skipped"] == []
    thr = summary["threshold"]
    assert thr == json.loads((trained["model"] / THRESHOLD_JSON).read_text())["threshold"]
    for r in rows:
        s = float(r["score"])
        assert np.isfinite(s) and s == pytest.approx(float(r["s_global"]) + float(r["s_local"]), abs=2e-6)
        assert r["pred_label"] == str(int(s > thr)) == str(int(float(r["pred_score"]) > 0.5))
        assert 0.0 <= float(r["pred_score"]) <= 1.0
    assert summary["n_anomalous"] == sum(int(r["pred_label"]) for r in rows)
    # one overlay and one map per image, each at the image's own size, mirroring the input tree
    n_files = [sum(1 for f in (out / d).rglob("*") if f.is_file()) for d in ("overlays", "maps")]
    assert n_files == [len(inputs)] * 2
    for p in inputs:
        name = Path(p).relative_to(trained["input"]).as_posix()
        with Image.open(p) as im:
            w, h = im.size
        with Image.open(out / "overlays" / f"{name}.png") as ov:
            assert ov.size == (w, h) and ov.mode == "RGB"
            assert np.asarray(ov).std() > 0
        m = np.load(out / "maps" / f"{name}.npy")
        assert m.shape == (h, w) and m.dtype == np.float32 and np.isfinite(m).all()


def test_score_cli_skips_and_reports_corrupt_files(trained, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    for p in sorted(trained["input"].glob("good_*.png")):
        (inp / p.name).write_bytes(p.read_bytes())
    (inp / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    (inp / "empty.jpg").write_bytes(b"")
    out = tmp_path / "out"
    code = main(
        ["score", "--model", str(trained["model"]), "--input", str(inp / "*"), "--output", str(out), "--workers", "0"]
    )
    assert code == 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_skipped"] == 2 and summary["exit_code"] == 3
    assert sorted(Path(s["path"]).name for s in summary["skipped"]) == ["corrupt.png", "empty.jpg"]
    assert all(s["error"] for s in summary["skipped"])
    rows = _read_csv(out / "scores.csv")
    assert sorted(Path(r["path"]).name for r in rows) == sorted(p.name for p in inp.glob("good_*.png"))
    assert sum(1 for f in (out / "overlays").rglob("*") if f.is_file()) == len(rows)


def test_score_cli_nothing_to_score(trained, tmp_path):
    assert (
        main(
            [
                "score",
                "--model",
                str(trained["model"]),
                "--input",
                str(tmp_path / "*.png"),
                "--output",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )


def test_torchrun_two_processes_give_the_same_csv(trained, tmp_path):
    args = [
        "--model",
        str(trained["model"]),
        "--input",
        str(trained["input"]),
        "--workers",
        "0",
        "--batch-size",
        "2",
        "--no-overlays",
    ]
    assert main(["score", *args, "--output", str(tmp_path / "one")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = torchrun("score", *args, "--output", str(tmp_path / "two"))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = _read_csv(tmp_path / "one" / "scores.csv"), _read_csv(tmp_path / "two" / "scores.csv")
    assert [(r["path"], r["pred_label"]) for r in one] == [(r["path"], r["pred_label"]) for r in two]
    for a, b in zip(one, two, strict=True):
        for k in ("score", "pred_score", "s_global", "s_local"):
            assert float(a[k]) == pytest.approx(float(b[k]), abs=1e-5)
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["n_scored"] == len(one)


def test_eval_cli_report(trained, tmp_path):
    out = tmp_path / "eval"
    code = main(
        [
            "eval",
            "--model",
            str(trained["model"]),
            "--data",
            str(trained["data"]),
            "--category",
            CAT,
            "--output",
            str(out),
            "--workers",
            "0",
            "--no-progress",
        ]
    )
    assert code == 0
    rep = json.loads((out / "report.json").read_text())
    assert (rep["n_test"], rep["n_normal"], rep["n_anomalous"], rep["n_skipped"]) == (6, 3, 3, 0)
    for k in ("image_AUROC", "image_F1Score", "image_F1Max", "pixel_AUROC", "pixel_AUPRO", "pixel_F1Max",
              "pixel_F1Score", "pixel_AUROC_per_anomalous_image_mean", "accuracy"):  # fmt: skip
        assert 0.0 <= rep[k] <= 1.0, k
    cal = json.loads((trained["model"] / THRESHOLD_JSON).read_text())
    assert rep["threshold"] == cal["threshold"] and rep["pixel_threshold"] == cal["pixel_threshold"]
    assert rep["images_per_second"] > 0 and set(rep["per_defect"]) == {"blob", "scratch"}
    imgs = rep["images"]
    preds = np.array([i["pred_label"] for i in imgs])
    labels = np.array([i["label"] for i in imgs])
    assert rep["accuracy"] == pytest.approx(np.mean(preds == labels))
    assert all(i["pred_label"] == int(i["pred_score"] > 0.5) == int(i["score"] > rep["threshold"]) for i in imgs)
    tp = int((preds & labels).sum())
    assert rep["image_F1Score"] == pytest.approx(2 * tp / (preds.sum() + labels.sum()))
    # the metrics are those of igd_fast.metrics / scikit-learn on the reported scores
    scores = [i["score"] for i in imgs]
    assert rep["image_AUROC"] == pytest.approx(roc_auc_score(labels, scores))
    # the test normals against the validation normals the threshold came from
    chk, normal = rep["test_normals_check"], [i["score"] for i in imgs if i["label"] == 0]
    assert (chk["test_normals"], chk["n_validation"]) == (3, len(cal["validation_scores"]))
    assert rep["validation_scores"] == list(cal["validation_scores"].values())
    assert chk["flagged"] == rep["n_false_positive"] and chk["promised_fpr"] == cal["guaranteed_fpr"]
    assert chk["verdict"] in ("consistent", "shifted") and 0.0 < chk["p_value"] <= 1.0
    assert chk["auroc_test_vs_validation_normals"] == pytest.approx(roc_auc_score(
        [0] * len(cal["validation_scores"]) + [1] * 3, [*cal["validation_scores"].values(), *normal]))  # fmt: skip
    assert rep["image_AUROC"] == pytest.approx(roc_auc_score(labels, [i["pred_score"] for i in imgs]))
    p, r, _ = precision_recall_curve(labels, scores)
    assert rep["image_F1Max"] == pytest.approx(np.max(2 * p * r / np.maximum(p + r, 1e-300)))
    with Image.open(out / "report.png") as fig:
        assert fig.size[0] > 400 and fig.size[1] > 300


# ---------------------------------------------------------------- outputs: pred_score, pred_mask, TIFF, JSON lines


def test_pred_score_normalisation_rules():
    from igd_fast.metrics import auroc
    from igd_fast.score.threshold import normalise_scores, score_scale

    rng = np.random.default_rng(0)
    t = 1.0
    s = np.concatenate([rng.normal(size=300), [t, t + 1e-15, t - 1e-15, t + 50.0, t - 1e6]])
    p = normalise_scores(s, t, 0.7)
    assert ((p >= 0) & (p <= 1)).all() and normalise_scores([t], t, 0.7)[0] == 0.5
    assert ((p > 0.5) == (s > t)).all()  # exactly, also within rounding of the threshold
    order = np.argsort(s)
    assert (np.diff(p[order]) >= 0).all()  # monotone
    labels = rng.integers(0, 2, s.size)
    labels[:2] = 0, 1
    assert auroc(p[:300], labels[:300]) == auroc(s[:300], labels[:300])
    assert score_scale([1.0, 3.0, 2.0], 3.0) == 2.0
    assert score_scale([2.5], 2.5) == 2.5 and score_scale([0.0], 0.0) == 1.0


def test_calibration_records_scale_and_pixel_threshold(trained, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(trained["model"], model)
    (model / THRESHOLD_JSON).unlink(missing_ok=True)
    scorer = Scorer(model, device="cpu")
    cal = scorer.calibration()
    val = list(cal["validation_scores"].values())
    assert cal["score_scale"] == pytest.approx(max(val) - min(val))
    maps = [r.map for r in scorer.score_paths(list(cal["validation_scores"]))]
    # at most PIXEL_MAX_FPR of the validation normals' pixels above it
    pixels = np.concatenate([m.ravel() for m in maps])
    assert cal["pixel_max_fpr"] == PIXEL_MAX_FPR
    assert float(np.mean(pixels > cal["pixel_threshold"])) <= PIXEL_MAX_FPR + 1e-9
    assert cal["pixel_threshold"] >= float(np.quantile(pixels, 1 - PIXEL_MAX_FPR)) - 1e-6
    assert scorer.pred_scores([cal["threshold"]])[0] == 0.5
    # a cache written before these fields existed is stale, silently (no warning)
    old = {k: v for k, v in cal.items() if k not in ("score_scale", "pixel_threshold")}
    (model / THRESHOLD_JSON).write_text(json.dumps(old))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_threshold(model, cal["alpha"]) is None


def test_score_cli_masks_tiffs_and_jsonl(trained, tmp_path):
    import tifffile  # the reader of the MVTec AD / LOCO evaluation scripts

    out = tmp_path / "out"
    test_dir = trained["data"] / CAT / "test"
    code = main(["score", "--model", str(trained["model"]), "--input", str(test_dir), "--out", str(out),
                 "--save-maps", "--save-masks", "--save-tiff", "--jsonl", "--no-overlays", "--workers", "0",
                 "--no-progress"])  # fmt: skip
    assert code == 0
    cal = json.loads((trained["model"] / THRESHOLD_JSON).read_text())
    rows = _read_csv(out / "scores.csv")
    lines = [json.loads(x) for x in (out / "scores.jsonl").read_text().splitlines()]
    assert [x["path"] for x in lines] == [r["path"] for r in rows] and len(rows) == 6
    for r, x in zip(rows, lines, strict=True):
        assert float(r["pred_score"]) == pytest.approx(x["pred_score"], abs=1e-9)
        assert int(r["pred_label"]) == x["pred_label"] == int(x["pred_score"] > 0.5)
        amap = np.load(x["anomaly_map"])
        p = Path(x["path"])
        tif = out / CAT / "test" / p.parent.name / f"{p.stem}.tiff"
        assert x["anomaly_map_tiff"] == str(tif)
        back = tifffile.imread(tif)
        assert back.dtype == np.float32 and back.shape == amap.shape and np.array_equal(back, amap)
        with Image.open(x["pred_mask"]) as im:
            np.testing.assert_array_equal(np.asarray(im) > 127, amap > cal["pixel_threshold"])
    # eval writes the same maps in the same layout
    ev = tmp_path / "eval"
    code = main(["eval", "--model", str(trained["model"]), "--data", str(trained["data"]), "--category", CAT,
                 "--out", str(ev), "--save-tiff", "--save-masks", "--workers", "0", "--no-progress"])  # fmt: skip
    assert code == 0
    rep = json.loads((ev / "report.json").read_text())
    for x, img in zip(lines, rep["images"], strict=True):
        assert img["path"] == x["path"] and img["pred_score"] == pytest.approx(x["pred_score"], abs=1e-6)
        p = Path(x["path"])
        assert img["anomaly_map"] == str(ev / CAT / "test" / p.parent.name / f"{p.stem}.tiff")
        np.testing.assert_allclose(tifffile.imread(img["anomaly_map"]), np.load(x["anomaly_map"]), atol=1e-5)
        assert Path(img["pred_mask"]) == ev / "masks" / p.parent.name / f"{p.stem}.png"


def test_tiff_without_tifffile_uses_pillow(tmp_path, monkeypatch):
    import sys

    import tifffile

    from igd_fast.score.io import read_tiff, save_tiff

    amap = np.random.default_rng(0).random((7, 11)).astype(np.float32) * 3 - 1
    monkeypatch.setitem(sys.modules, "tifffile", None)  # import fails: the Pillow path
    save_tiff(tmp_path / "a.tiff", amap)
    assert np.array_equal(read_tiff(tmp_path / "a.tiff"), amap)
    monkeypatch.undo()
    assert np.array_equal(tifffile.imread(tmp_path / "a.tiff"), amap)  # readable by the evaluators


def test_save_tiff_needs_the_mvtec_layout(trained, tmp_path, capsys):
    code = main(["score", "--model", str(trained["model"]), "--input", str(trained["input"]), "--out",
                 str(tmp_path / "o"), "--save-tiff"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "--save-tiff" in err and "<category>/test/<defect>" in err
    same = tmp_path / "d" / "cat" / "test" / "good"
    same.mkdir(parents=True)
    shutil.copy(trained["input"] / "good_000.png", same / "000.png")
    shutil.copy(trained["input"] / "good_000.jpg", same / "000.jpg")
    assert main(["score", "--model", str(trained["model"]), "--input", str(same), "--out", str(tmp_path / "o2"),
                 "--save-tiff"]) == 2  # fmt: skip
    assert "would both be written to cat/test/good/000.tiff" in capsys.readouterr().err


# ---------------------------------------------------------------- input layouts: MVTec LOCO, Folder

METRICS = ("image_AUROC", "image_F1Score", "image_F1Max", "accuracy", "pixel_AUROC", "pixel_AUPRO", "pixel_F1Max",
           "pixel_F1Score", "pixel_AUROC_per_anomalous_image_mean", "n_test", "n_anomalous")  # fmt: skip


def _eval(model, out, *data):
    assert main(["eval", "--model", str(model), *data, "--out", str(out), "--workers", "0", "--no-progress"]) == 0
    return json.loads((out / "report.json").read_text())


def test_loco_and_folder_layouts_evaluate_to_the_mvtec_numbers(trained, tmp_path):
    from _layouts import to_folder, to_loco

    cat = trained["data"] / CAT
    ad = _eval(trained["model"], tmp_path / "ad", "--data", str(trained["data"]), "--category", CAT)
    to_loco(cat, tmp_path / "loco")
    loco = _eval(trained["model"], tmp_path / "lo", "--data", str(tmp_path / "loco"), "--category", CAT)
    assert (ad["layout"], loco["layout"]) == ("mvtec", "mvtec_loco")
    for k in METRICS:
        assert loco[k] == ad[k], k
    assert loco["per_defect"] == ad["per_defect"]
    d = to_folder(cat, tmp_path / "folder")
    folder = ["--normal-dir", str(d["normal"]), "--abnormal-dir", str(d["abnormal"])]
    fo = _eval(trained["model"], tmp_path / "fo", *folder, "--mask-dir", str(d["mask"]),
               "--normal-test-dir", str(d["normal_test"]))  # fmt: skip
    assert fo["layout"] == "folder" and fo["category"] == "folder"
    for k in METRICS:
        assert fo[k] == pytest.approx(ad[k], abs=1e-6), k  # other batches: float rounding only
    # without masks: image metrics, no pixel metrics
    nm = _eval(trained["model"], tmp_path / "nm", *folder, "--normal-test-dir", str(d["normal_test"]))
    assert nm["image_AUROC"] == pytest.approx(ad["image_AUROC"]) and nm["pixel_AUROC"] is None
    assert "--mask-dir" in nm["undefined"]["pixel_AUROC"]


def test_eval_layout_errors_exit_2(trained, tmp_path, capsys):
    base = ["eval", "--model", str(trained["model"]), "--out", str(tmp_path / "o")]
    assert main(base) == 2
    assert "--data ROOT --category NAME" in capsys.readouterr().err
    assert main([*base, "--normal-dir", str(tmp_path / "nope")]) == 2
    assert "--normal-dir" in capsys.readouterr().err


def test_eval_warns_when_the_test_normals_are_shifted(capsys):
    from igd_fast.cli.eval import _warn_shift

    check = {"test_normals": 20, "n_validation": 6, "flagged": 19, "promised_fpr": 1 / 7, "p_value": 5e-5,
             "verdict": "shifted", "auroc_test_vs_validation_normals": 0.99}  # fmt: skip
    _warn_shift(check)
    err = capsys.readouterr().err
    assert "warning" in err and "19 of 20" in err and "0.143" in err and "calibrate on normals" in err
    _warn_shift({**check, "verdict": "consistent"})
    _warn_shift(None)
    assert capsys.readouterr().err == ""
