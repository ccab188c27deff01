"""The second bad-input round (issue #31): nothing written outside --out, nothing lost or
half-written, no unbounded allocation from a small input, no silently wrong number, no
traceback. Each case: the documented exit code (2 for a user mistake, 3 when some inputs
were skipped), a message naming the file or flag, and where data was at stake that
nothing outside --out changed and every file left behind decodes."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from _cli import TINY_MODEL_ARGS
from PIL import Image

from igd_fast.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from igd_fast.cli import main
from igd_fast.data import image_size_of, load_mask, make_synthetic_mvtec, open_rgb
from igd_fast.data.files import glob_files
from igd_fast.models import ModelConfig
from igd_fast.outputs import (
    LOCK_NAME,
    OutputPathError,
    atomic_write_bytes,
    inside,
    output_lock,
    sweep_temp,
)
from igd_fast.score import Scorer
from igd_fast.score.threshold import THRESHOLD_JSON, conformal_threshold
from igd_fast.train import train

CAT = "synth"
GLOBAL = dict(kind="global", image_size=64, width=8, latent=16, blocks=(1, 1, 1, 1), weights=(0.3, 0.3, 0.4))
LOCAL = dict(kind="local", image_size=64, width=8, latent=16, blocks=(1, 1, 1, 1))
FAST = dict(epochs=1, batch_size=4, workers=0, progress=False, device="cpu", val_fraction=0.25)
ROOT = str(Path(__file__).resolve().parents[1])
SUB_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_inputs")
    data = root / "data"
    make_synthetic_mvtec(data, CAT, n_train=10, n_test_good=2, n_test_bad=2, size=64, seed=3)
    both = root / "both"
    for kw in (GLOBAL, LOCAL):
        train(ModelConfig(**kw), data, CAT, both, patches_per_image=4, **FAST)
    Scorer(both, device="cpu").calibration()  # threshold.json cached: copies start calibrated
    return {"root": root, "data": data, "both": both, "test": data / CAT / "test"}


def _err(capsys) -> str:
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return out.err


def _score(model, inp, out, *extra) -> list[str]:
    return ["score", "--model", str(model), "--input", str(inp), "--out", str(out), "--workers", "0",
            "--no-progress", *extra]  # fmt: skip


def _train(env, out, *extra) -> list[str]:
    return ["train", "--data", str(env["data"]), "--category", CAT, "--out", str(out), "--model", "global",
            "--epochs", "1", "--workers", "0", "--val-fraction", "0.25", *TINY_MODEL_ARGS,
            "--global-weights", "0.3", "0.3", "0.4", *extra]  # fmt: skip


def _tree(root: Path, skip: Path | None = None) -> dict[str, tuple[int, int]]:
    """Every file below ``root`` (but not below ``skip``) with its size and mtime."""
    out = {}
    for p in root.rglob("*"):
        if p.is_file() and not (skip is not None and (p == skip or skip in p.parents)):
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def _decodes(folder: Path) -> list[Path]:
    """Every non-hidden file below ``folder``, each checked to decode (PNG/TIFF/NPY/JSON/CSV)."""
    files = [p for p in folder.rglob("*") if p.is_file() and not any(s.startswith(".") for s in p.parts[-3:])]
    for p in files:
        if p.suffix in (".png", ".tiff"):
            with Image.open(p) as im:
                im.load()
        elif p.suffix == ".npy":
            np.load(p)
        elif p.suffix == ".json":
            json.loads(p.read_text())
        elif p.suffix == ".csv":
            list(csv.reader(p.open()))
    return files


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _many_images(folder: Path, n: int, size: int = 64) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:04d}.png")
    return folder


@contextmanager
def _tmpfs(path: Path, size: int):
    """A small tmpfs at ``path`` (a full disk on demand); the test is skipped unless root can mount one."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a full disk is simulated with a tmpfs, which needs root")
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _wait_for(cond, proc, timeout=300.0):
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert cond(), proc.communicate()[1][-3000:]


# ================================================================ writes outside --out, lost data


def test_eval_category_cannot_escape_out(env, tmp_path, capsys):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    before = _tree(tmp_path, skip=work / "R")
    code = main(["eval", "--model", str(env["both"]), "--normal-dir", str(env["data"] / CAT / "train" / "good"),
                 "--abnormal-dir", str(env["test"] / "blob"), "--category", "../../escaped", "--save-tiff",
                 "--out", str(work / "R"), "--workers", "0", "--no-progress"])  # fmt: skip
    assert code == 2
    assert "--category" in _err(capsys)
    assert _tree(tmp_path, skip=work / "R") == before and not (tmp_path / "escaped").exists()
    with pytest.raises(OutputPathError, match="outside --out"):
        inside(work / "R", "../../escaped", "x.tiff")


def test_train_refuses_to_replace_a_trained_model(env, tmp_path, capsys):
    out = tmp_path / "m"
    assert main(_train(env, out, "--seed", "1")) == 0
    capsys.readouterr()
    files = {p.name: _sha(p) for p in out.iterdir() if p.is_file() and p.name != LOCK_NAME}
    assert main(_train(env, out, "--seed", "2")) == 2
    err = _err(capsys)
    assert "global.pt" in err and "--resume" in err and "--overwrite" in err
    assert {p.name: _sha(p) for p in out.iterdir() if p.is_file() and p.name != LOCK_NAME} == files
    # the other kind on another split would make run.json describe two splits: refused too
    local = _train(env, out, "--seed", "2")
    local[local.index("--model") + 1] = "local"
    assert main([*local, "--patches-per-image", "4"]) == 2
    err = _err(capsys)
    assert "another split" in err and "seed" in err and not (out / "local.pt").exists()
    # --overwrite replaces the folder's model, and run.json then describes the new run
    assert main(_train(env, out, "--seed", "2", "--overwrite")) == 0
    assert _sha(out / "global.pt") != files["global.pt"]
    assert json.loads((out / "run.json").read_text())["seed"] == 2
    assert main(_train(env, out, "--seed", "2", "--overwrite", "--resume")) == 2
    assert "--overwrite" in _err(capsys)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["SIGINT", "SIGTERM", "SIGKILL"])
def test_signals_during_score_leave_only_whole_files(env, tmp_path, sig):
    inp = _many_images(tmp_path / "in", 150)
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.txt").write_text("an earlier run's file")  # an --out that holds other results
    before = _tree(tmp_path, skip=out)
    argv = _score(env["both"], inp, out, "--batch-size", "1", "--save-maps")
    proc = subprocess.Popen([sys.executable, "-m", "igd_fast", *argv], env=SUB_ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    _wait_for(lambda: len(list((out / "overlays").glob("*.png"))) >= 5 if (out / "overlays").is_dir() else False,
              proc)  # fmt: skip
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 2, err[-2000:]
        assert "Traceback" not in err and "interrupted after" in err and "complete" in err
    written = _decodes(out)  # every file left behind decodes
    assert len(written) >= 5 and (out / "earlier.txt").read_text() == "an earlier run's file"
    assert _tree(tmp_path, skip=out) == before  # nothing outside --out changed
    if sig != signal.SIGKILL:
        assert not [p for p in out.rglob("*.igd-tmp")]
    # a rerun finds no lock held and no debris left, and completes
    assert main(_score(env["both"], inp, out, "--batch-size", "16", "--no-overlays")) == 0
    assert not [p for p in out.rglob("*.igd-tmp")]


def test_a_second_run_into_a_folder_in_use_is_refused(env, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    with output_lock(out):  # a run in progress
        assert main(_score(env["both"], env["test"], out)) == 2
        err = _err(capsys)
        assert "in use" in err and str(os.getpid()) in err
        assert not (out / "scores.csv").exists()
        assert main(["eval", "--model", str(env["both"]), "--data", str(env["data"]), "--category", CAT,
                     "--out", str(out), "--workers", "0", "--no-progress"]) == 2  # fmt: skip
        assert "in use" in _err(capsys)
    assert main(_score(env["both"], env["test"], out)) == 0  # the lock dies with its holder


def test_score_never_lists_its_own_outputs(env, tmp_path, capsys):
    inp = tmp_path / "in"
    shutil.copytree(env["test"], inp)
    n = len(list(inp.rglob("*.png")))
    for _ in range(2):  # the second run would score the first one's overlays
        assert main(_score(env["both"], inp, inp / "res")) == 0
        rows = list(csv.DictReader((inp / "res" / "scores.csv").open()))
        assert len(rows) == n and not any("/res/" in r["path"] for r in rows)
    assert main(_score(env["both"], inp, inp)) == 2  # --out the input folder itself
    assert "is the --input folder" in _err(capsys)
    # nor another igd-fast output folder below the input (it holds the lock file)
    assert main(_score(env["both"], inp, tmp_path / "o2")) == 0
    assert len(list(csv.DictReader((tmp_path / "o2" / "scores.csv").open()))) == n


def test_empty_input_is_refused(env, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(env["test"])  # it used to score the working directory recursively
    assert main(_score(env["both"], "", tmp_path / "o")) == 2
    assert "--input is empty" in _err(capsys)
    assert not (tmp_path / "o" / "scores.csv").exists()


def test_symlink_loops_are_followed_once(env, tmp_path, capsys):
    inp = tmp_path / "in"
    (inp / "sub").mkdir(parents=True)
    shutil.copy(next(env["test"].rglob("*.png")), inp / "sub" / "a.png")
    os.symlink(inp, inp / "sub" / "loop")  # in/sub/loop -> in
    os.symlink(inp / "sub", inp / "sub" / "loop2")  # a second loop
    ext = tmp_path / "ext"
    ext.mkdir()
    shutil.copy(inp / "sub" / "a.png", ext / "b.png")
    os.symlink(ext, inp / "linked")  # a symlinked folder is followed
    assert sorted(p.name for p in glob_files(f"{inp}/**/*.png")) == ["a.png", "b.png"]
    for spec in (f"{inp}/**/*.png", str(inp)):
        out = tmp_path / f"o{len(spec)}"
        assert main(_score(env["both"], spec, out)) == 0
        rows = list(csv.DictReader((out / "scores.csv").open()))
        assert sorted(Path(r["path"]).name for r in rows) == ["a.png", "b.png"]


# ================================================================ memory blow-ups from small inputs


def test_pixel_bomb_is_refused_before_decoding(env, tmp_path, capsys, monkeypatch):
    inp = tmp_path / "in"
    inp.mkdir()
    Image.new("L", (12000, 12000)).save(inp / "bomb.png")  # 0.1 MB on disk, 144 million pixels
    shutil.copy(next(env["test"].rglob("*.png")), inp / "ok.png")
    assert (inp / "bomb.png").stat().st_size < 500_000
    assert main(_score(env["both"], inp, tmp_path / "o")) == 3
    err = _err(capsys)
    assert "bomb.png" in err and "IGD_FAST_MAX_PIXELS" in err and "40,000,000" in err
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["n_scored"] == 1 and "IGD_FAST_MAX_PIXELS" in summary["skipped"][0]["error"]
    monkeypatch.setenv("IGD_FAST_MAX_PIXELS", "1000")  # the limit is configurable
    with pytest.raises(ValueError, match="64×64 = 4,096 pixels, over the limit of 1,000"):
        open_rgb(inp / "ok.png")


def test_crafted_checkpoint_config_is_refused_without_allocating(env, tmp_path):
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB; the old code grew it by 4.7 GB
    for field, value, why in (("width", 2048, "do not fit its config"), ("image_size", 32768, "IGD_FAST_MAX_PIXELS"),
                              ("image_size", 4096, "do not fit its config")):  # fmt: skip
        ck = load_checkpoint(env["both"] / "global.pt")
        ck["config"][field] = value
        bad = tmp_path / f"{field}{value}" / "global.pt"
        bad.parent.mkdir()
        torch.save(ck, bad)
        with pytest.raises(CheckpointError) as e:
            load_model(bad)
        assert str(bad) in str(e.value) and why in str(e.value)
        assert main(_score(bad.parent, env["test"], tmp_path / "o")) == 2
    grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak
    assert grew < 500_000, f"peak RSS grew by {grew / 1e6:.1f} GB"


def test_memory_bound_options_are_limited(env, tmp_path, capsys):
    for extra, flag in ((["--map-sigma", "1e7"], "--map-sigma"), (["--map-term", "maha", "--residual-sigma", "1e6"],
                                                                  "--residual-sigma")):  # fmt: skip
        with pytest.raises(SystemExit) as e:
            main(_score(env["both"], env["test"], tmp_path / "o", *extra))
        assert e.value.code == 2
        err = _err(capsys)
        assert flag in err and "IGD_FAST_MAX_SIGMA" in err
    with pytest.raises(ValueError, match="IGD_FAST_MAX_SIGMA"):
        Scorer(env["both"], device="cpu", map_sigma=1e7)
    with pytest.raises(SystemExit) as e:
        main(["export", "--model", str(env["both"]), "--out", str(tmp_path / "m.onnx"), "--check-batch", "3000"])
    assert e.value.code == 2
    err = _err(capsys)
    assert "--check-batch" in err and "IGD_FAST_MAX_CHECK_BATCH" in err
    assert not (tmp_path / "o" / "scores.csv").exists() and not (tmp_path / "m.onnx").exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are a POSIX thing")
def test_fifo_named_as_a_validation_file_does_not_hang(env, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(env["both"], model)
    (model / THRESHOLD_JSON).unlink()
    os.mkfifo(env["data"] / CAT / "train" / "good" / "pipe.png")
    try:
        run = json.loads((model / "run.json").read_text())
        run["val_files"] = ["train/good/pipe.png", *run["val_files"]]
        (model / "run.json").write_text(json.dumps(run))
        # in a thread, so that a regression fails the test instead of hanging it
        result: list[int] = []
        t = threading.Thread(target=lambda: result.append(main(_score(model, env["test"], tmp_path / "o"))),
                             daemon=True)  # fmt: skip
        t.start()
        t.join(timeout=240)
    finally:
        os.unlink(env["data"] / CAT / "train" / "good" / "pipe.png")
    assert result == [0], "score hung on the FIFO (or failed)"
    failed = json.loads((model / THRESHOLD_JSON).read_text())["validation_failed"]
    assert "FIFO" in failed[0]["error"] and "pipe.png" in failed[0]["path"]


# ================================================================ silently wrong numbers


def test_nan_weights_are_refused_on_load(env, tmp_path, capsys):
    model = tmp_path / "m"
    shutil.copytree(env["both"], model)
    ck = load_checkpoint(model / "global.pt")
    ck["model"] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in ck["model"].items()}
    torch.save(ck, model / "global.pt")
    assert main(_score(model, env["test"], tmp_path / "o")) == 2
    err = _err(capsys)
    assert "global.pt" in err and "non-finite" in err
    assert not (tmp_path / "o" / "scores.csv").exists()
    # and in the API, and for a NaN calibration
    with pytest.raises(CheckpointError, match="non-finite"):
        load_model(model / "global.pt")
    with pytest.raises(ValueError, match="not finite"):
        conformal_threshold([0.1, float("nan"), 0.3])


def test_a_nan_score_is_an_error_for_its_image_never_label_0(env, tmp_path, capsys, monkeypatch):
    from igd_fast.score.module import ScoringModule

    real = ScoringModule.raw

    def first_nan(self, x, want_maps=True):
        out = real(self, x, want_maps)
        out.score = out.score.clone()
        out.score[0] = float("nan")
        return out

    monkeypatch.setattr(ScoringModule, "raw", first_nan)
    assert main(_score(env["both"], env["test"], tmp_path / "o", "--batch-size", "100")) == 3
    err = _err(capsys)
    first = sorted(env["test"].rglob("*.png"))[0]
    assert first.name in err and "not finite" in err
    rows = list(csv.DictReader((tmp_path / "o" / "scores.csv").open()))
    assert str(first) not in [r["path"] for r in rows] and len(rows) == len(list(env["test"].rglob("*.png"))) - 1
    assert all(np.isfinite(float(r["score"])) for r in rows)


def test_exported_graph_labels_a_nan_score_anomalous(env):
    from igd_fast.export.onnx import open_pipeline

    _, pipe = open_pipeline(env["both"])
    x = torch.rand(2, 3, 64, 64)
    x[1] = float("nan")
    with torch.no_grad():
        out = pipe(x)
    label, score = out[1], out[4]
    assert torch.isnan(score[1]) and int(label[1]) == 1


def test_diverging_training_stops(env, tmp_path, capsys):
    out = tmp_path / "m"
    assert main(_train(env, out, "--lr", "1e3", "--epochs", "3", "--batch-size", "4")) == 2
    err = _err(capsys)
    assert "--lr 1000 too high" in err and ("non-finite" in err or "diverged" in err)
    assert not (out / "global.pt").exists()  # the diverged epoch was not saved


def test_negative_score_scale_in_threshold_json_is_recalibrated(env, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(env["both"], model)
    rec = json.loads((model / THRESHOLD_JSON).read_text())
    rec["score_scale"] = -abs(rec["score_scale"])
    (model / THRESHOLD_JSON).write_text(json.dumps(rec))
    with pytest.warns(UserWarning, match="score_scale"):
        assert main(_score(model, env["test"], tmp_path / "o")) == 0
    assert json.loads((model / THRESHOLD_JSON).read_text())["score_scale"] > 0
    rows = list(csv.DictReader((tmp_path / "o" / "scores.csv").open()))
    assert all((float(r["pred_score"]) > 0.5) == (r["pred_label"] == "1") for r in rows)


def test_masks_stored_as_0_1_read_as_0_255(env, tmp_path, capsys):
    data = tmp_path / "d"
    shutil.copytree(env["data"], data)
    masks = sorted((data / CAT / "ground_truth").rglob("*_mask.png"))
    for m in masks:
        a = np.asarray(Image.open(m))
        Image.fromarray((a > 0).astype(np.uint8)).save(m)  # 0/1, as other tools store them
    assert float(load_mask(masks[0], 64).sum()) > 0
    reports = []
    for root, out in ((env["data"], tmp_path / "e255"), (data, tmp_path / "e01")):
        assert main(["eval", "--model", str(env["both"]), "--data", str(root), "--category", CAT, "--out", str(out),
                     "--workers", "0", "--no-progress"]) == 0  # fmt: skip
        reports.append(json.loads((out / "report.json").read_text()))
    assert reports[1]["pixel_AUROC"] is not None and reports[1]["pixel_AUROC"] == reports[0]["pixel_AUROC"]


def test_exif_rotated_jpeg_is_scored_upright_and_float_tiff_out_of_range_is_refused(env, tmp_path, capsys):
    inp = tmp_path / "in"
    inp.mkdir()
    rgb = np.random.default_rng(1).integers(0, 256, (40, 70, 3), dtype=np.uint8)  # 70 wide, 40 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view: 40 wide, 70 high
    Image.fromarray(rgb).save(inp / "rot.jpg", exif=exif)
    assert image_size_of(inp / "rot.jpg") == (70, 40) and open_rgb(inp / "rot.jpg").size == (40, 70)
    Image.fromarray(rgb[..., 0].astype(np.float32)).save(inp / "float255.tiff")  # 0-255 in a float TIFF
    assert main(_score(env["both"], inp, tmp_path / "o", "--save-maps")) == 3
    err = _err(capsys)
    assert "float255.tiff" in err and "[0, 1]" in err
    assert np.load(tmp_path / "o" / "maps" / "rot.jpg.npy").shape == (70, 40)
    with Image.open(tmp_path / "o" / "overlays" / "rot.jpg.png") as im:
        assert im.size == (40, 70)


def test_ms_ssim_nan_check_is_opt_in_and_documented():
    import igd_fast

    x = torch.rand(1, 3, 32, 32)
    y = x.clone()
    y[0, 0, 5, 5] = float("nan")
    assert "NaN" in igd_fast.ms_ssim.__doc__ and "check_finite" in igd_fast.ms_ssim.__doc__
    with pytest.raises(ValueError, match="NaN"):
        igd_fast.ms_ssim(x, y, igd_fast.LOCAL, check_finite=True)
    with pytest.raises(ValueError, match="NaN"):
        igd_fast.ms_ssim_map(x, y, igd_fast.LOCAL, check_finite=True)


def test_export_opset_it_cannot_write_is_refused(env, tmp_path, capsys):
    pytest.importorskip("onnx")
    with pytest.raises(SystemExit) as e:
        main(["export", "--model", str(env["both"]), "--out", str(tmp_path / "m.onnx"), "--opset", "7"])
    assert e.value.code == 2
    err = _err(capsys)
    assert "--opset" in err and "18" in err and not (tmp_path / "m.onnx").exists()


# ================================================================ tracebacks instead of exit 2


def test_full_disk_during_train_resume_keeps_the_checkpoint(env, tmp_path, capsys):
    src = tmp_path / "src"
    assert main(_train(env, src)) == 0
    capsys.readouterr()
    size = sum(p.stat().st_size for p in src.iterdir() if p.is_file())
    with _tmpfs(tmp_path / "disk", size + (src / "global.pt").stat().st_size // 3) as disk:
        out = disk / "m"
        shutil.copytree(src, out)
        before = _sha(out / "global.pt")
        argv = _train(env, out, "--resume")
        argv[argv.index("--epochs") + 1] = "3"
        assert main(argv) == 2
        err = _err(capsys)
        assert "global.pt" in err and "No space left" in err and "--resume" in err
        assert _sha(out / "global.pt") == before and load_checkpoint(out / "global.pt")["epoch"] == 1
        assert not list(out.glob("*.igd-tmp")) and not list(out.glob(".*.tmp"))


def test_full_disk_during_score_stops_with_whole_files(env, tmp_path, capsys):
    inp = _many_images(tmp_path / "in", 60)
    with _tmpfs(tmp_path / "disk", 200_000) as disk:
        assert main(_score(env["both"], inp, disk / "o", "--save-maps")) == 2
        err = _err(capsys)
        assert "No space left" in err and str(disk / "o") in err
        assert len(_decodes(disk / "o")) > 0
        assert not list((disk / "o").rglob("*.igd-tmp"))


def test_ctrl_c_during_eval_and_export(env, tmp_path):
    data = tmp_path / "d"
    make_synthetic_mvtec(data, CAT, n_train=4, n_test_good=150, n_test_bad=2, size=64, seed=5)
    out = tmp_path / "e"
    argv = ["eval", "--model", str(env["both"]), "--data", str(data), "--category", CAT, "--out", str(out),
            "--save-tiff", "--workers", "0", "--no-progress", "--batch-size", "1"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "igd_fast", *argv], env=SUB_ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    _wait_for(lambda: len(list(out.rglob("*.tiff"))) >= 3, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "Traceback" not in err and "interrupted" in err, err[-2000:]
    assert not (out / "report.json").exists() and _decodes(out)
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    dep = tmp_path / "dep"
    argv = ["export", "--model", str(env["both"]), "--out", str(dep / "m.onnx")]
    proc = subprocess.Popen([sys.executable, "-m", "igd_fast", *argv], env=SUB_ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    _wait_for(dep.is_dir, proc)  # made once the run started: the export (tens of seconds) is under way
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "Traceback" not in err and "interrupted" in err, err[-2000:]
    assert not (dep / "m.onnx").exists() and not list(dep.iterdir())  # nothing half-written


def test_second_ctrl_c_during_train_cleanup(env, tmp_path):
    out = tmp_path / "m"
    argv = _train(env, out, "--epochs", "500", "--workers", "1")
    proc = subprocess.Popen([sys.executable, "-m", "igd_fast", *argv], env=SUB_ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    _wait_for(lambda: (out / "global.pt").exists(), proc)
    time.sleep(0.3)
    for _ in range(3):  # an impatient user
        proc.send_signal(signal.SIGINT)
        time.sleep(0.02)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err[-2000:]
    assert "Traceback" not in err and "intact at epoch" in err
    assert load_checkpoint(out / "global.pt")["epoch"] >= 1


def test_resume_from_a_checkpoint_without_optimiser_state(env, tmp_path, capsys):
    out = tmp_path / "m"
    assert main(_train(env, out)) == 0
    capsys.readouterr()
    model = load_model(out / "global.pt")
    ck = load_checkpoint(out / "global.pt")
    save_checkpoint(out / "global.pt", model, epoch=1, run=ck["run"])  # the API, no optimisers
    argv = _train(env, out, "--resume")
    argv[argv.index("--epochs") + 1] = "2"
    assert main(argv) == 2
    err = _err(capsys)
    assert "global.pt" in err and "opt_ae" in err and "--out" in err


@pytest.mark.parametrize("content", ["{not json", "[1, 2, 3]"])
def test_damaged_run_json_is_named(env, tmp_path, capsys, content):
    out = tmp_path / "m"
    assert main(_train(env, out)) == 0
    capsys.readouterr()
    (out / "run.json").write_text(content)
    argv = _train(env, out, "--resume")
    argv[argv.index("--epochs") + 1] = "2"
    assert main(argv) == 2
    assert "run.json" in _err(capsys)
    assert (out / "run.json").read_text() == content  # not replaced behind the user's back
    assert main(_score(out, env["test"], tmp_path / "o")) == 2
    assert "run.json" in _err(capsys)


def test_pickle_or_random_bytes_as_teacher(env, tmp_path, capsys):
    import fractions
    import pickle

    pk = tmp_path / "teacher.pkl"
    pk.write_bytes(pickle.dumps({"conv1.weight": fractions.Fraction(1, 3)}, protocol=4))
    rnd = tmp_path / "teacher.bin"
    rnd.write_bytes(np.random.default_rng(0).bytes(3000))
    for f, why in ((pk, "pickled Python objects"), (rnd, "corrupt, truncated")):
        assert main(_train(env, tmp_path / "o", "--distill-teacher", str(f))) == 2
        err = _err(capsys)
        assert "--distill-teacher" in err and f.name in err and why in err


def test_torch_wording_of_a_pickle_does_not_matter(tmp_path, monkeypatch):
    import pickle

    from igd_fast.models.weights import load_weights

    p = tmp_path / "x.pt"
    p.write_bytes(b"PK")

    def refuse(*a, **k):
        raise pickle.UnpicklingError("Weights only load failed.\nWeightsUnpickler error: unsupported GLOBAL os.system")

    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(ValueError, match="pickled Python objects"):
        load_weights(p, "checkpoint")


def test_damaged_exports_are_named(env, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    rec = {"contract": "raw-images", "scoring_size": 64, "threshold": 1.0, "score_scale": 1.0,
           "pixel_threshold": 1.0, "map_low": 0.0, "map_high": 1.0, "models": ["global"]}  # fmt: skip
    dep = tmp_path / "dep"
    dep.mkdir()
    (dep / "m.onnx").write_bytes(np.random.default_rng(0).bytes(5000))  # a truncated / damaged graph
    (dep / "m.onnx.json").write_text(json.dumps(rec))
    args = _score(dep / "m.onnx", env["test"], tmp_path / "o", "--runtime", "onnxruntime")
    assert main(args) == 2
    err = _err(capsys)
    assert "m.onnx" in err and "corrupt" in err
    del rec["scoring_size"]
    (dep / "m.onnx.json").write_text(json.dumps(rec))
    assert main(args) == 2
    err = _err(capsys)
    assert "m.onnx.json" in err and "'scoring_size'" in err and "export the model again" in err
    del rec["contract"]  # a record of the earlier, fixed-size export
    (dep / "m.onnx.json").write_text(json.dumps(rec))
    assert main(args) == 2
    assert "older igd-fast" in _err(capsys)


def test_device_cpu_1_names_the_device_not_the_checkpoint(env, tmp_path, capsys):
    assert main([*_score(env["both"], env["test"], tmp_path / "o"), "--device", "cpu:1"]) == 2
    err = _err(capsys)
    assert "--device" in err and "cpu:1" in err and "corrupt" not in err


BENCH_CASES = [(["--repeats", "0"], "--repeats"), (["--shape", "0", "3", "64", "64"], "--shape"),
               (["--shape", "1", "3", "8", "8", "--config", "global"], "--shape")]  # fmt: skip


@pytest.mark.parametrize("argv, flag", BENCH_CASES)
def test_bench_bad_values(capsys, argv, flag):
    try:
        code = main(["bench", *argv])
    except SystemExit as e:
        code = e.code
    assert code == 2
    assert flag in _err(capsys)


# ================================================================ messages that mislead


def test_pickled_checkpoint_is_called_one(env, tmp_path, capsys):
    import fractions

    model = tmp_path / "m"
    shutil.copytree(env["both"], model)
    ck = load_checkpoint(model / "local.pt")
    ck["history"] = [fractions.Fraction(1, 3)]
    torch.save(ck, model / "local.pt")
    assert main(_score(model, env["test"], tmp_path / "o")) == 2
    err = _err(capsys)
    assert "local.pt" in err and "pickled Python objects" in err


def test_model_file_given_as_model_dir(env, tmp_path, capsys):
    assert main(_score(env["both"] / "global.pt", env["test"], tmp_path / "o")) == 2
    err = _err(capsys)
    assert "not a model directory" in err and f"--model {env['both']}" in err and "does not exist" not in err


def test_model_files_are_readable_by_other_accounts(env, tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "m"
        train(ModelConfig(**GLOBAL), env["data"], CAT, out, **FAST)
        Scorer(out, device="cpu").calibration()
    finally:
        os.umask(old)
    for f in ("global.pt", "run.json", "global_log.json", "global_log.csv", THRESHOLD_JSON):
        mode = stat.S_IMODE((out / f).stat().st_mode)
        assert mode == 0o644, (f, oct(mode))


def test_killed_writers_leave_no_debris(tmp_path):
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()  # a process id that is no longer running
    target = tmp_path / "enc.pt"
    stale = tmp_path / f".enc.pt.{done.pid}.deadbeef.igd-tmp"
    stale.write_bytes(b"half")
    live = tmp_path / f".enc.pt.{os.getpid()}.cafe0001.igd-tmp"  # a writer still running: kept
    live.write_bytes(b"busy")
    atomic_write_bytes(target, lambda f: f.write(b"whole"))
    assert target.read_bytes() == b"whole" and not stale.exists() and live.exists()
    stale.write_bytes(b"half")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / f".x.png.{done.pid}.0.igd-tmp").write_bytes(b"half")
    assert sweep_temp(tmp_path) == 2 and live.exists()


def test_sigkill_during_pretrain_leaves_the_encoder_loadable_and_no_debris(env, tmp_path):
    enc = tmp_path / "enc.pt"
    argv = ["pretrain", "--data", str(env["data"]), "--category", CAT, "--out", str(enc), "--model", "global",
            "--image-size", "64", "--width", "8", "--blocks", "1", "1", "1", "1", "--latent", "16", "--epochs", "200",
            "--batch-size", "4", "--workers", "0", "--no-progress", "--device", "cpu"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "igd_fast", *argv], env=SUB_ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    _wait_for(enc.exists, proc)
    time.sleep(0.5)
    proc.kill()
    proc.communicate(timeout=60)
    assert torch.load(enc, weights_only=True)["encoders"]["global"]["epochs_done"] >= 1
    argv[argv.index("--epochs") + 1] = "1"
    r = subprocess.run([sys.executable, "-m", "igd_fast", *argv], env=SUB_ENV, capture_output=True, text=True,
                       timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert [p.name for p in tmp_path.iterdir()] == ["enc.pt"]
