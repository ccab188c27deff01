"""``igd-fast score --engine ray`` and ``igd_fast.score.ray_engine`` on a local Ray cluster the
module starts (2 CPUs, loopback, no dashboard): the same scores.csv / JSONL / maps as the local
engine, a rerun that skips what is already scored, and the Python function over bytes."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from igd_fast.cli import main  # noqa: E402

# before the cluster starts: no usage report, workers at normal priority (Ray's nice 15
# starves them on a busy CI machine)
QUIET = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_worker_niceness": "0"}
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster():
    os.environ.update(QUIET)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", _node_ip_address="127.0.0.1")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def scored(tiny_pair, cluster, tmp_path_factory):
    """The tiny pair's test folder scored by the local engine and by Ray (2 actors)."""
    root = tmp_path_factory.mktemp("score_ray")
    model = root / "model"
    shutil.copytree(tiny_pair["model"], model)  # scoring caches threshold.json in it
    inp = tiny_pair["data"] / "synth" / "test"
    common = ["score", "--model", str(model), "--input", str(inp), "--jsonl", "--save-maps", "--save-masks",
              "--device", "cpu", "--no-progress"]  # fmt: skip
    assert main([*common, "--out", str(root / "local")]) == 0
    assert main([*common, "--out", str(root / "ray"), "--engine", "ray", "--ray-workers", "2"]) == 0
    return {"root": root, "model": model, "input": inp, "common": common}


def _csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _same_scores(a, b):
    ra, rb = _csv(a), _csv(b)
    assert [r["path"] for r in ra] == [r["path"] for r in rb] and ra
    for x, y in zip(ra, rb):
        assert x["pred_label"] == y["pred_label"], x["path"]
        for k in ("score", "pred_score", "s_global", "s_local"):
            assert abs(float(x[k]) - float(y[k])) <= 1e-6, (x["path"], k, x[k], y[k])


def test_ray_engine_writes_what_the_local_engine_writes(scored):
    root = scored["root"]
    _same_scores(root / "local" / "scores.csv", root / "ray" / "scores.csv")
    local = [json.loads(ln) for ln in (root / "local" / "scores.jsonl").read_text().splitlines()]
    remote = [json.loads(ln) for ln in (root / "ray" / "scores.jsonl").read_text().splitlines()]
    assert [sorted(r) for r in local] == [sorted(r) for r in remote]
    for a, b in zip(local, remote):
        assert Path(b["anomaly_map"]).relative_to(root / "ray") == Path(a["anomaly_map"]).relative_to(root / "local")
        # float32 maps; an actor runs 1 torch thread, the local engine 2: sums in another order
        np.testing.assert_allclose(np.load(b["anomaly_map"]), np.load(a["anomaly_map"]), rtol=1e-5, atol=1e-6)
    files = {sub: sorted(p.relative_to(root / "local" / sub) for p in (root / "local" / sub).rglob("*.png"))
             for sub in ("overlays", "masks")}  # fmt: skip
    for sub, names in files.items():
        assert names and names == sorted(p.relative_to(root / "ray" / sub) for p in (root / "ray" / sub).rglob("*.png"))
    summary = json.loads((root / "ray" / "summary.json").read_text())
    assert summary["engine"]["name"] == "ray" and summary["engine"]["workers"] == 2
    assert summary["n_scored"] == len(local) and summary["threshold"] == json.loads(
        (root / "local" / "summary.json").read_text())["threshold"]  # fmt: skip


def test_a_rerun_through_address_scores_only_what_is_missing(scored, cluster):
    """The Ray run, as if cut short (its journal keeps 2 images, no scores.csv); a second run,
    a separate process joining the cluster by --address, scores the rest, and a third has
    nothing left to score. (In place: the journal is keyed by the output folder.)"""
    root, out = scored["root"], scored["root"] / "ray"
    (out / "scores.csv").unlink()
    parts = sorted((out / ".igd-fast-scored").glob("part-*.jsonl"))
    kept = "".join(p.read_text() for p in parts).splitlines(keepends=True)[:2]
    for p in parts:
        p.unlink()
    (out / ".igd-fast-scored" / "part-0.jsonl").write_text("".join(kept))
    cmd = [sys.executable, "-m", "igd_fast", *scored["common"], "--out", str(out), "--engine", "ray", "--address",
           cluster, "--ray-workers", "1"]  # fmt: skip
    env = {**os.environ, **QUIET, "PYTHONPATH": str(ROOT)}
    subprocess.run(cmd, check=True, env=env, capture_output=True, text=True, timeout=300)
    engine = json.loads((out / "summary.json").read_text())["engine"]
    n = len(_csv(root / "local" / "scores.csv"))
    assert (engine["resumed"], engine["scored_now"]) == (2, n - 2)
    _same_scores(root / "local" / "scores.csv", out / "scores.csv")
    assert main([*scored["common"], "--out", str(out), "--engine", "ray"]) == 0
    engine = json.loads((out / "summary.json").read_text())["engine"]
    assert (engine["resumed"], engine["scored_now"]) == (n, 0)
    _same_scores(root / "local" / "scores.csv", out / "scores.csv")


def test_score_dataset_over_the_files_bytes(scored):
    from igd_fast.score.ray_engine import score_dataset

    files = sorted(str(p) for p in scored["input"].rglob("*.png"))
    ds = ray.data.read_binary_files(files, include_paths=True)
    rows = score_dataset(ds, scored["model"], workers=1).take_all()
    local = {r["path"]: r for r in _csv(scored["root"] / "local" / "scores.csv")}
    assert len(rows) == len(local)
    for r in rows:
        want = local["/" + r["path"].lstrip("/")]
        assert r["error"] == "" and r["reported"] and r["pred_label"] == int(want["pred_label"])
        for k in ("score", "pred_score", "s_global", "s_local"):
            assert abs(r[k] - float(want[k])) <= 1e-6, (r["path"], k)


def test_engine_flags_are_checked_before_scoring(scored, tmp_path, capsys):
    base = [*scored["common"], "--out", str(tmp_path / "o")]
    assert main([*base, "--address", "127.0.0.1:1"]) == 2
    assert "only apply to --engine ray" in capsys.readouterr().err
    assert main([*base, "--engine", "ray", "--runtime", "onnxruntime"]) == 2
    assert "--runtime torch" in capsys.readouterr().err
