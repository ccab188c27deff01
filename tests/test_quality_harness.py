"""benchmarks/quality/run.py: its rows and table, and one tiny run through the CLI."""

import argparse
import csv
import importlib.util
import json
from pathlib import Path

import pytest

from igd_fast.data import make_synthetic_mvtec

RUN_PY = Path(__file__).resolve().parents[1] / "benchmarks" / "quality" / "run.py"


@pytest.fixture(scope="module")
def harness():
    spec = importlib.util.spec_from_file_location("quality_run", RUN_PY)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_rows_append_under_one_header_and_table_regenerates(harness, tmp_path):
    csv_path = tmp_path / "r.csv"
    harness.append_row(csv_path, {"category": "a", "variant": "igd", "image_AUROC": 0.61234, "scoring": ""})
    harness.append_row(csv_path, {"category": "a", "variant": "rec", "image_AUROC": 0.5, "scoring": "--map-sigma 4"})
    rows = list(csv.DictReader(open(csv_path)))
    assert [r["variant"] for r in rows] == ["igd", "rec"]
    assert list(rows[0]) == list(harness.COLUMNS)
    md = harness.write_markdown(csv_path, tmp_path / "r.md")
    assert md == (tmp_path / "r.md").read_text()
    assert "| a | igd |" in md and "0.612" in md and "`--map-sigma 4`" in md and "(defaults)" in md
    with pytest.raises(ValueError):
        harness.append_row(csv_path, {"no_such_column": 1})


def test_one_tiny_run_through_the_cli(harness, tmp_path):
    data = tmp_path / "data"
    make_synthetic_mvtec(data, "synth", n_train=8, n_test_good=2, n_test_bad=2, size=64, seed=3)
    res = tmp_path / "results.csv"
    rc = harness.main(["--data", str(data), "--category", "synth", "--variants", "igd", "rec", "--epochs", "1",
                       "--image-size", "64", "--width", "8", "--latent", "16", "--patches-per-image", "4",
                       "--global-weights", "0.3", "0.3", "0.4", "--seed", "5", "--work", str(tmp_path / "w"),
                       "--results", str(res), "--scoring", "", "--score-norm standard"])  # fmt: skip
    assert rc == 0
    rows = list(csv.DictReader(open(res)))
    assert [(r["variant"], r["scoring"]) for r in rows] == [("igd", ""), ("igd", "--score-norm standard"),
                                                            ("rec", ""), ("rec", "--score-norm standard")]  # fmt: skip
    for r in rows:
        assert r["seed"] == "5" and r["epochs"] == "1" and r["extra_train"] == "--global-weights 0.3 0.3 0.4"
        assert float(r["rho"]) == 0.15  # the paper's ρ, read from run.json
        assert 0.0 <= float(r["image_AUROC"]) <= 1.0 and 0.0 <= float(r["pixel_AUROC"]) <= 1.0
        assert float(r["pixel_AUPRO"]) >= 0.0
    assert rows[0]["train_seconds"] and float(rows[0]["train_seconds"]) > 0
    # the second setting re-evaluates the same model: same training time, its own eval time
    assert rows[1]["train_seconds"] == rows[0]["train_seconds"] and rows[1]["model_dir"] == rows[0]["model_dir"]
    assert (tmp_path / "results.md").read_text().count("| synth |") == 4


def test_runs_that_differ_only_in_extra_flags_get_their_own_model_folder(harness):
    base = dict(category="c", model="both", preset="cpu", image_size=None, width=None, epochs=None, seed=1,
                pretrain=None, init_encoder=None, global_weights=None)  # fmt: skip
    tags = {harness._tag(argparse.Namespace(**base, extra_train=x), "igd") for x in ("", "--rho 1", "--rho 0.5")}
    assert len(tags) == 3 and harness._tag(argparse.Namespace(**base, extra_train=""), "igd") == "c_igd_both_pcpu_seed1"
    gw = harness._tag(argparse.Namespace(**base | {"global_weights": [0.5, 0.5]}, extra_train=""), "igd")
    assert gw not in tags


def test_an_older_csv_is_upgraded_to_the_new_columns(harness, tmp_path):
    csv_path = tmp_path / "r.csv"
    old = [c for c in harness.COLUMNS if c not in ("preset", "pretrain", "pretrain_seconds")]
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=old)
        w.writeheader()
        w.writerow({"category": "a", "variant": "igd", "image_AUROC": 0.7, "model_dir": "m"})
    harness.append_row(csv_path, {"category": "b", "variant": "igd", "pretrain": "--epochs 3"})
    rows = list(csv.DictReader(open(csv_path)))
    assert list(rows[0]) == list(harness.COLUMNS)
    assert (rows[0]["category"], rows[0]["image_AUROC"], rows[0]["model_dir"], rows[0]["pretrain"]) == (
        "a", "0.7", "m", "")  # fmt: skip
    assert (rows[1]["category"], rows[1]["pretrain"]) == ("b", "--epochs 3")


def test_a_tiny_pretrain_then_train_run_through_the_cli(harness, tmp_path):
    data = tmp_path / "data"
    make_synthetic_mvtec(data, "synth", n_train=8, n_test_good=2, n_test_bad=2, size=64, seed=3)
    res = tmp_path / "results.csv"
    rc = harness.main(["--data", str(data), "--category", "synth", "--variants", "rec", "--epochs", "1",
                       "--image-size", "64", "--width", "8", "--latent", "16", "--patches-per-image", "4",
                       "--global-weights", "0.3", "0.3", "0.4", "--work", str(tmp_path / "w"),
                       "--results", str(res), "--pretrain", "--epochs 1 --batch-size 4 --workers 0"])  # fmt: skip
    assert rc == 0
    (row,) = list(csv.DictReader(open(res)))
    assert row["pretrain"] == "pretrain --epochs 1 --batch-size 4 --workers 0" and float(row["pretrain_seconds"]) > 0
    run = json.loads((Path(row["model_dir"]) / "run.json").read_text())
    assert run["models"]["global"]["init_encoder"]["path"] == str(Path(row["model_dir"]) / "encoder.pt")
