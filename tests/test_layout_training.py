"""Training reads the MVTec LOCO and Folder layouts: the same images, split the same
way, train the same model and evaluate to the same numbers as in the MVTec AD layout."""

from __future__ import annotations

import json
import shutil

import torch
from _cli import TINY_MODEL_ARGS
from _layouts import to_folder, to_loco

from igd_fast.cli import main
from igd_fast.data import make_synthetic_mvtec

CAT = "synth"
TRAIN = ["--model", "global", "--epochs", "1", "--workers", "0", "--val-fraction", "0.25", *TINY_MODEL_ARGS,
         "--global-weights", "0.3", "0.3", "0.4"]  # fmt: skip
KEYS = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO", "threshold")


def _report(out):
    rep = json.loads((out / "report.json").read_text())
    return {k: rep[k] for k in KEYS}


def _weights(model_dir):
    return torch.load(model_dir / "global.pt", weights_only=True)["model"]


def test_loco_and_folder_layouts_train_and_evaluate_like_mvtec_ad(tmp_path):
    ad = tmp_path / "ad"
    make_synthetic_mvtec(ad, CAT, n_train=10, n_test_good=2, n_test_bad=2, size=64, seed=5)
    assert main(["train", "--data", str(ad), "--category", CAT, "--out", str(tmp_path / "m_ad"), *TRAIN]) == 0
    ev = ["--workers", "0", "--no-progress"]
    assert main(["eval", "--model", str(tmp_path / "m_ad"), "--data", str(ad), "--category", CAT,
                 "--out", str(tmp_path / "e_ad"), *ev]) == 0  # fmt: skip
    run = json.loads((tmp_path / "m_ad" / "run.json").read_text())

    # LOCO: validation/good holds exactly the files the AD run held out
    loco = to_loco(ad / CAT, tmp_path / "loco")
    for f in (loco / "validation" / "good").iterdir():
        shutil.move(f, loco / "train" / "good" / f.name)
    for rel in run["val_files"]:
        shutil.move(loco / rel, loco / "validation" / "good" / (ad / CAT / rel).name)
    assert main(["train", "--data", str(tmp_path / "loco"), "--category", CAT, "--out", str(tmp_path / "m_loco"),
                 *TRAIN]) == 0  # fmt: skip
    loco_run = json.loads((tmp_path / "m_loco" / "run.json").read_text())
    assert loco_run["layout"] == "mvtec_loco" and all(v.startswith("validation/good/") for v in loco_run["val_files"])
    assert main(["eval", "--model", str(tmp_path / "m_loco"), "--data", str(tmp_path / "loco"), "--category", CAT,
                 "--out", str(tmp_path / "e_loco"), *ev]) == 0  # fmt: skip

    # Folder: every normal image trains (--normal-test-dir given), split by the same seed
    d = to_folder(ad / CAT, tmp_path / "folder")
    assert main(["train", "--normal-dir", str(d["normal"]), "--normal-test-dir", str(d["normal_test"]),
                 "--out", str(tmp_path / "m_folder"), *TRAIN]) == 0  # fmt: skip
    assert main(["eval", "--model", str(tmp_path / "m_folder"), "--normal-dir", str(d["normal"]),
                 "--normal-test-dir", str(d["normal_test"]), "--abnormal-dir", str(d["abnormal"]),
                 "--mask-dir", str(d["mask"]), "--out", str(tmp_path / "e_folder"), *ev]) == 0  # fmt: skip

    w_ad = _weights(tmp_path / "m_ad")
    for other in ("m_loco", "m_folder"):
        w = _weights(tmp_path / other)
        assert all(torch.equal(w_ad[k], w[k]) for k in w_ad), other
    ref = _report(tmp_path / "e_ad")
    for other in ("e_loco", "e_folder"):
        got = _report(tmp_path / other)
        for k in KEYS:
            assert abs(got[k] - ref[k]) < 1e-6, (other, k, got[k], ref[k])


def test_train_layout_errors_exit_2(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "o"), *TRAIN]) == 2
    assert "name the data" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path), "--category", "nope", "--out", str(tmp_path / "o"), *TRAIN]) == 2
    assert "does not exist" in capsys.readouterr().err
