"""One-class protocols: idx reader, exact seeded splits, materialised folders, results."""

from __future__ import annotations

import csv
import gzip
import json
import os

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from igd_fast.cli import main
from igd_fast.data import list_test_samples, list_train_files, make_synthetic_mvtec
from igd_fast.data.mnist import IMAGES_MAGIC, IdxFormatError, load_mnist, read_idx, write_idx
from igd_fast.protocol import (
    Protocol,
    ProtocolSettings,
    class_pools,
    materialise_mnist,
    materialise_mvtec,
    mnist_split,
    mvtec_split,
    round_half_up,
)

TINY = {"width": 8, "blocks": (1, 1, 1, 1), "latent": 16, "epochs": 1, "batch_size": 8}
TINY_CLI = ["--width", "8", "--blocks", "1", "1", "1", "1", "--latent", "16", "--epochs", "1", "--batch-size", "8",
            "--no-progress", "--device", "cpu"]  # fmt: skip


def fake_mnist(folder, per_class=(9, 8, 7, 6, 9, 8, 7, 6, 9, 8), seed=0):
    """MNIST-like t10k files: class c draws a bright square at a class-specific place."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.full(n, c, np.uint8) for c, n in enumerate(per_class)])
    rng.shuffle(labels)
    images = rng.integers(0, 40, (len(labels), 28, 28)).astype(np.uint8)
    for i, c in enumerate(labels):
        r, q = divmod(int(c), 4)
        images[i, 2 + 8 * r : 8 + 8 * r, 2 + 6 * q : 8 + 6 * q] = 255
    write_idx(folder / "t10k-images-idx3-ubyte.gz", images)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", labels)
    return images, labels


# ------------------------------------------------------------------ idx reader


def test_idx_round_trip(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("a.idx", "a.idx.gz"):
        assert np.array_equal(read_idx(write_idx(tmp_path / name, a), IMAGES_MAGIC), a)
    f = np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2)
    assert np.array_equal(read_idx(write_idx(tmp_path / "f.idx", f)), f)
    images, labels = fake_mnist(tmp_path)
    x, y = load_mnist(tmp_path)
    assert np.array_equal(x, images) and np.array_equal(y, labels)


def test_idx_corrupt_files_name_the_file(tmp_path):
    fake_mnist(tmp_path)
    img = tmp_path / "t10k-images-idx3-ubyte.gz"
    lab = tmp_path / "t10k-labels-idx1-ubyte.gz"
    raw = gzip.decompress(img.read_bytes())

    def expect(path, *words):
        with pytest.raises(IdxFormatError) as e:
            load_mnist(tmp_path)
        msg = str(e.value)
        assert str(path) in msg and all(w in msg for w in words), msg

    img.write_bytes(gzip.compress(raw[:-5]))  # truncated data
    expect(img, "holds")
    img.write_bytes(raw[:200])  # not gzip at all
    expect(img, "cannot read")
    img.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + raw[4:]))  # a labels magic
    expect(img, "0x00000801", "expected 0x00000803")
    img.write_bytes(gzip.compress(b"\x12\x34" + raw[2:]))
    expect(img, "bad magic")
    img.write_bytes(gzip.compress(raw))
    write_idx(lab, np.zeros(5, np.uint8))  # count mismatch
    expect(lab, "5 labels")
    lab.unlink()
    expect(lab, "does not exist")


# ------------------------------------------------------------------ splits


def test_mnist_split_exact_disjoint_deterministic():
    labels = np.random.default_rng(1).integers(0, 10, 501)
    pools = class_pools(labels, seed=3)
    for c in range(10):
        n = int((labels == c).sum())
        tr, te = pools.train[c], pools.test[c]
        assert len(tr) == n // 2 and len(te) == n - n // 2
        assert not set(tr) & set(te) and set(tr) | set(te) == set(np.flatnonzero(labels == c))
    all_test = np.concatenate(list(pools.test.values()))
    for k in (0, 7):
        for f, r in ((1.0, 0.0), (0.2, 0.0), (0.6, 0.1), (1.0, 0.05)):
            s = mnist_split(labels, k, 3, f, r)
            n_pool = len(pools.train[k])
            assert len(s.train_normal) == round_half_up(f * n_pool)
            assert set(s.train_normal) <= set(pools.train[k])
            assert len(s.train_anomaly) == round_half_up(r * len(s.train_normal))
            assert (labels[s.train_anomaly] != k).all()
            assert not set(s.train_anomaly) & set(all_test)  # from the training pools only
            assert np.array_equal(s.test_normal, pools.test[k])
            assert np.array_equal(np.sort(np.concatenate([s.test_normal, s.test_anomaly])), np.sort(all_test))
            again = mnist_split(labels, k, 3, f, r)
            assert all(np.array_equal(a, b) for a, b in zip(s.to_dict().values(), again.to_dict().values()))
    # nested fractions / contamination for one seed; another seed splits differently
    assert set(mnist_split(labels, 2, 3, 0.2).train_normal) <= set(mnist_split(labels, 2, 3, 0.6).train_normal)
    a, b = mnist_split(labels, 2, 3, 1.0, 0.05), mnist_split(labels, 2, 3, 1.0, 0.1)
    assert set(a.train_anomaly) < set(b.train_anomaly)
    assert not np.array_equal(class_pools(labels, 4).train[2], pools.train[2])
    assert round_half_up(2.5) == 3 and round_half_up(0.49) == 0
    for bad in ((0.0, 0.0), (1.2, 0.0), (1.0, -0.1), (1.0, 1.0)):
        with pytest.raises(ValueError):
            mnist_split(labels, 2, 3, *bad)
    with pytest.raises(ValueError, match="at least 2"):
        mnist_split(labels, 2, 3, 0.01)


def test_mvtec_split_moves_contamination_out_of_test(tmp_path):
    make_synthetic_mvtec(tmp_path / "src", "synth", n_train=20, n_test_good=4, n_test_bad=8, size=32)
    files = list_train_files(tmp_path / "src", "synth")
    samples = list_test_samples(tmp_path / "src", "synth")
    labels = [s.label for s in samples]
    s = mvtec_split(len(files), labels, seed=5, train_fraction=0.6, contamination=0.25)
    assert len(s.train_normal) == 12 and len(s.train_anomaly) == 3
    assert set(s.train_anomaly) <= {i for i, v in enumerate(labels) if v == 1}
    assert not set(s.train_anomaly) & set(s.test_anomaly)
    assert len(s.test_anomaly) == 5 and len(s.test_normal) == 4
    assert s.to_dict() == mvtec_split(len(files), labels, 5, 0.6, 0.25).to_dict()
    with pytest.raises(ValueError, match="at least one must stay"):
        mvtec_split(len(files), labels, 5, 1.0, 0.4)  # 8 of 8 anomalies

    cat = materialise_mvtec(files, samples, s, tmp_path / "run", "synth")
    assert len(list_train_files(tmp_path / "run", "synth")) == 15
    out = list_test_samples(tmp_path / "run", "synth")  # every anomaly keeps its real mask
    assert sum(x.label for x in out) == 5 and len(out) == 9
    moved = {f"{samples[i].defect}_{samples[i].path.name}" for i in s.train_anomaly}
    assert moved <= {p.name for p in (cat / "train" / "good").iterdir()}
    assert json.loads((cat / "split.json").read_text())["indices"] == s.to_dict()


def test_materialise_mnist_folder(tmp_path):
    images, labels = fake_mnist(tmp_path)
    s = mnist_split(labels, 4, 0, 1.0, 0.25)
    cat = materialise_mnist(images, labels, s, tmp_path / "run", "class_4")
    train = list_train_files(tmp_path / "run", "class_4")
    assert len(train) == len(s.train_normal) + len(s.train_anomaly) == 4 + 1
    assert sum(not p.stem.endswith("_4") for p in train) == 1  # the contamination, named by its label
    test = list_test_samples(tmp_path / "run", "class_4")
    assert sum(t.label == 0 for t in test) == len(s.test_normal) == 5
    assert sum(t.label for t in test) == len(s.test_anomaly)
    assert (cat / "split.json").is_file()


# ------------------------------------------------------------------ end to end


def _scores(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return [int(r["label"]) for r in rows], [float(r["score"]) for r in rows]


def test_protocol_results_match_sklearn_and_resume(tmp_path):
    fake_mnist(tmp_path)
    st = ProtocolSettings.for_dataset("mnist", tmp_path, ["1", "6"], contamination=0.25, **TINY)
    logs: list[str] = []
    res = Protocol(st, tmp_path / "out", log=logs.append).run()
    disk = json.loads((tmp_path / "out" / "results.json").read_text())
    assert disk["complete"] and set(disk["classes"]) == {"1", "6"}
    for k in ("1", "6"):
        y, s = _scores(tmp_path / "out" / k / "scores.csv")
        assert disk["classes"][k]["image_AUROC"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert len(y) == disk["classes"][k]["n_test_normal"] + disk["classes"][k]["n_test_anomaly"]
        assert disk["classes"][k]["n_train_anomaly"] == 1
    assert disk["mean_image_AUROC"] == pytest.approx(np.mean([res["classes"][k]["image_AUROC"] for k in "16"]))
    assert "| **mean** |" in (tmp_path / "out" / "results.md").read_text()

    # resume: the finished classes are read back, not retrained
    ckpt = tmp_path / "out" / "1" / "model" / "global.pt"
    mtime = ckpt.stat().st_mtime_ns
    again = Protocol(st, tmp_path / "out", log=logs.append).run()
    assert ckpt.stat().st_mtime_ns == mtime and "resuming" in logs[-1]
    assert again["classes"] == disk["classes"]
    one = Protocol(ProtocolSettings.for_dataset("mnist", tmp_path, ["6"], contamination=0.25, **TINY), tmp_path / "out")
    sub = one.run()  # a sub-list reuses the finished class and keeps the other one
    assert sub["classes"] == {"6": disk["classes"]["6"], "1": disk["classes"]["1"]}
    assert sub["mean_image_AUROC"] == disk["classes"]["6"]["image_AUROC"]
    with pytest.raises(ValueError, match="other settings"):
        Protocol(ProtocolSettings.for_dataset("mnist", tmp_path, ["1"], seed=1, **TINY), tmp_path / "out").run()


def test_parallel_jobs_give_the_sequential_results(tmp_path):
    import torch

    fake_mnist(tmp_path)
    st = ProtocolSettings.for_dataset("mnist", tmp_path, ["1", "6", "3"], **TINY)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))  # the workers' thread count
    try:
        seq = Protocol(st, tmp_path / "seq").run()
    finally:
        torch.set_num_threads(threads)
    logs: list[str] = []
    par = Protocol(st, tmp_path / "par", jobs=2, log=logs.append).run()
    disk = json.loads((tmp_path / "par" / "results.json").read_text())
    assert disk["complete"] and disk["jobs"] == 2 and disk["wall_seconds"] > 0
    assert list(disk["classes"]) == ["1", "6", "3"]  # the asked-for order, whatever finished first
    assert sorted(line.split(":")[0] for line in logs) == ["mnist 1", "mnist 3", "mnist 6"]
    for k in ("1", "6", "3"):
        assert par["classes"][k]["image_AUROC"] == seq["classes"][k]["image_AUROC"]
        assert _scores(tmp_path / "par" / k / "scores.csv") == _scores(tmp_path / "seq" / k / "scores.csv")
    assert par["mean_image_AUROC"] == seq["mean_image_AUROC"]
    with pytest.raises(ValueError, match="jobs"):
        Protocol(st, tmp_path / "x", jobs=0)


def test_protocol_cli_mvtec(tmp_path, capsys):
    make_synthetic_mvtec(tmp_path / "src", "synth", n_train=10, n_test_good=4, n_test_bad=6, size=32)
    out = tmp_path / "out"
    args = ["protocol", "mvtec", "--data", str(tmp_path / "src"), "--category", "synth", "--out", str(out),
            "--image-size", "32", "--win-size", "3", "--weights", "0.5", "0.5", "--contamination", "0.2",
            "--workers", "0", "--lr", "5e-4", "--lr-schedule", "cosine", *TINY_CLI]  # fmt: skip
    assert main(args) == 0
    assert "mean image AUROC" in capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    assert (res["settings"]["lr"], res["settings"]["lr_schedule"]) == (5e-4, "cosine")
    from igd_fast.checkpoint import load_model

    cfg = load_model(out / "synth" / "model" / "global.pt").config
    assert (cfg.lr, cfg.lr_schedule) == (5e-4, "cosine")
    r = res["classes"]["synth"]
    assert (r["n_train_normal"], r["n_train_anomaly"], r["n_test_anomaly"]) == (10, 2, 4)
    y, s = _scores(out / "synth" / "scores.csv")
    assert r["image_AUROC"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--normal-class", "11"], "--normal-class"),
        (["--train-fraction", "0"], "train fraction"),
        (["--contamination", "1.5"], "contamination"),
        (["--category", "bottle"], "--category is for mvtec"),
        (["--image-size", "28"], "multiple of 32"),
        (["--epochs", "0"], "epochs"),
        (["--workers", "-1"], "--workers"),
        (["--jobs", "0"], "--jobs"),
    ],
)
def test_protocol_cli_bad_arguments_exit_2(tmp_path, capsys, extra, words):
    fake_mnist(tmp_path)
    code = main(["protocol", "mnist", "--data", str(tmp_path), "--out", str(tmp_path / "o"), *TINY_CLI, *extra])
    err = capsys.readouterr().err
    assert code == 2 and words in err and "Traceback" not in err


def test_protocol_cli_bad_data_and_usage_exit_2(tmp_path, capsys):
    code = main(["protocol", "mnist", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "o"), *TINY_CLI])
    err = capsys.readouterr().err
    assert code == 2 and "t10k-images-idx3-ubyte.gz" in err and "does not exist" in err
    assert main(["protocol", "mvtec", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "--category" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["protocol", "mnist", "--data", str(tmp_path), "--out", "o", "--variant", "nope"])
    assert e.value.code == 2


@pytest.mark.parametrize("variant", ["mse", "dsvdd"])
def test_protocol_variants_score_through_scorer(tmp_path, variant):
    fake_mnist(tmp_path)
    st = ProtocolSettings.for_dataset("mnist", tmp_path, ["2"], variant=variant, **TINY)
    res = Protocol(st, tmp_path / "out", log=lambda m: None).run()
    y, s = _scores(tmp_path / "out" / "2" / "scores.csv")
    assert res["classes"]["2"]["image_AUROC"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert "variant " + variant in (tmp_path / "out" / "results.md").read_text()


def test_dev_split_never_touches_the_test_pools():
    labels = np.random.default_rng(2).integers(0, 10, 700)
    pools, dev = class_pools(labels, seed=5), class_pools(labels, seed=5, dev=True)
    real_test = set(np.concatenate(list(pools.test.values())))
    for c in range(10):
        n = len(pools.train[c])
        assert len(dev.train[c]) == int(np.floor(0.7 * n)) and len(dev.test[c]) == n - len(dev.train[c])
        assert set(dev.train[c]) | set(dev.test[c]) == set(pools.train[c])
        assert not set(dev.train[c]) & set(dev.test[c])
    for k in (0, 9):
        s = mnist_split(labels, k, 5, 1.0, 0.1, dev=True)
        used = set(s.train_normal) | set(s.train_anomaly) | set(s.test_normal) | set(s.test_anomaly)
        assert not used & real_test
        assert np.array_equal(s.test_normal, dev.test[k]) and not set(s.train_anomaly) & set(s.test_anomaly)
        again = mnist_split(labels, k, 5, 1.0, 0.1, dev=True)
        assert all(np.array_equal(a, b) for a, b in zip(s.to_dict().values(), again.to_dict().values()))


def test_dataset_defaults_of_the_optimiser():
    mn = ProtocolSettings.for_dataset("mnist", ".", ["0"])
    mv = ProtocolSettings.for_dataset("mvtec", ".", ["x"])
    assert (mn.lr, mn.lr_schedule, mv.lr, mv.lr_schedule) == (3e-4, "cosine", 1e-4, "constant")
    assert ProtocolSettings.for_dataset("mnist", ".", ["0"], lr=None, lr_schedule="constant").lr_schedule == "constant"


def test_protocol_dev_settings_and_latent_weight(tmp_path):
    fake_mnist(tmp_path, per_class=(14,) * 10)
    with pytest.raises(ValueError, match="mnist only"):
        Protocol(ProtocolSettings.for_dataset("mvtec", tmp_path, ["x"], dev=True, **TINY), tmp_path / "o")
    with pytest.raises(ValueError, match="latent weight"):
        Protocol(ProtocolSettings.for_dataset("mnist", tmp_path, ["1"], latent_weight=-1.0, **TINY), tmp_path / "o")
    st = ProtocolSettings.for_dataset("mnist", tmp_path, ["1"], dev=True, sigma2_floor=50.0, variant="rec-gac", **TINY)
    r = Protocol(st, tmp_path / "dev").run()
    c = r["classes"]["1"]
    assert r["settings"]["dev"] and (c["n_train_normal"], c["n_test_normal"]) == (4, 3)  # 7 -> 4 + 3
    assert "development split" in (tmp_path / "dev" / "results.md").read_text()
    from igd_fast.checkpoint import load_model

    m = load_model(tmp_path / "dev" / "1" / "model" / "global.pt")
    assert m.config.sigma2_floor == 50.0 and float(m.descriptor.sigma2) == 50.0  # the floor held
    # latent weight 0 scores l_r alone: the scores change, the split does not
    st0 = ProtocolSettings.for_dataset("mnist", tmp_path, ["1"], dev=True, sigma2_floor=50.0, variant="rec-gac",
                                       latent_weight=0.0, **TINY)  # fmt: skip
    Protocol(st0, tmp_path / "dev0").run()
    _, s1 = _scores(tmp_path / "dev" / "1" / "scores.csv")
    _, s0 = _scores(tmp_path / "dev0" / "1" / "scores.csv")
    assert np.all(np.asarray(s1) > np.asarray(s0))
