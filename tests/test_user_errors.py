"""A new user's mistakes: each one gives exit code 2 and a message naming the problem
(never a traceback), found before any work starts; inputs are handled by one rule."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _cli import TINY_MODEL_ARGS
from PIL import Image

from igd_fast.cli import main
from igd_fast.data import list_test_samples, load_image, make_synthetic_mvtec
from igd_fast.models import ModelConfig
from igd_fast.score import Scorer
from igd_fast.score.threshold import THRESHOLD_JSON
from igd_fast.train import train

CAT = "synth"
GLOBAL = dict(kind="global", image_size=64, width=8, latent=16, blocks=(1, 1, 1, 1), weights=(0.3, 0.3, 0.4))
LOCAL = dict(kind="local", image_size=64, width=8, latent=16, blocks=(1, 1, 1, 1))
FAST = dict(epochs=1, batch_size=4, workers=0, progress=False, device="cpu", val_fraction=0.25)
ROOT = str(Path(__file__).resolve().parents[1])


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("mistakes")
    data = root / "data"
    make_synthetic_mvtec(data, CAT, n_train=10, n_test_good=2, n_test_bad=2, size=64, seed=2)
    both, only_global = root / "both", root / "global_only"
    for kw in (GLOBAL, LOCAL):
        train(ModelConfig(**kw), data, CAT, both, patches_per_image=4, **FAST)
    train(ModelConfig(**GLOBAL), data, CAT, only_global, **FAST)
    return {"root": root, "data": data, "both": both, "global": only_global}


def _err(capsys) -> str:
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return out.err


def _score(env, model, out, *extra) -> list[str]:
    return ["score", "--model", str(model), "--input", str(env["data"] / CAT / "test"), "--out", str(out),
            "--workers", "0", "--no-progress", *extra]  # fmt: skip


def _train(env, out, *extra) -> list[str]:
    return ["train", "--data", str(env["data"]), "--category", CAT, "--out", str(out), "--model", "global",
            "--epochs", "1", "--workers", "0", "--val-fraction", "0.25", *TINY_MODEL_ARGS,
            "--global-weights", "0.3", "0.3", "0.4", *extra]  # fmt: skip


def _parse_error(capsys, argv) -> str:
    """argparse's exit 2 for a bad value, with the flag in the message."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    return _err(capsys)


# ---------------------------------------------------------------- model directories


def test_global_only_model_dir_scores_and_evaluates(env, tmp_path, capsys):
    scorer = Scorer(env["global"], device="cpu")
    assert scorer.kinds == ("global",)
    assert main(_score(env, env["global"], tmp_path / "s")) == 0
    rows = (tmp_path / "s" / "scores.csv").read_text().splitlines()[1:]
    assert rows and all(float(r.split(",")[5]) == 0.0 for r in rows)  # s_local column
    code = main(["eval", "--model", str(env["global"]), "--data", str(env["data"]), "--category", CAT,
                 "--out", str(tmp_path / "e"), "--workers", "0", "--no-progress"])  # fmt: skip
    assert code == 0
    rep = json.loads((tmp_path / "e" / "report.json").read_text())
    assert rep["models"] == ["global"] and 0 <= rep["image_AUROC"] <= 1
    assert all(i["score"] == pytest.approx(i["s_global"]) for i in rep["images"])


def test_empty_model_dir_says_what_to_do(env, tmp_path, capsys):
    (tmp_path / "m").mkdir()
    assert main(_score(env, tmp_path / "m", tmp_path / "o")) == 2
    err = _err(capsys)
    assert "holds none of global.pt, local.pt, defect.pt" in err and "igd-fast train" in err


def test_random_bytes_are_a_named_checkpoint_error(tmp_path):
    # seeded, so that every byte pattern the unpickler may trip on is tried on every run
    # (seeds 0-199 include ones where torch.load raises IndexError and KeyError)
    from igd_fast.checkpoint import CheckpointError, load_checkpoint

    p = tmp_path / "local.pt"
    for seed in range(200):
        p.write_bytes(np.random.default_rng(seed).bytes(4096))
        with pytest.raises(CheckpointError, match="local.pt"):
            load_checkpoint(p)


@pytest.mark.parametrize("damage", ["truncated", "random"])
def test_damaged_checkpoint_is_named(env, tmp_path, capsys, damage):
    model = tmp_path / "m"
    shutil.copytree(env["both"], model)
    raw = (model / "local.pt").read_bytes()
    (model / "local.pt").write_bytes(raw[: len(raw) // 2] if damage == "truncated" else os.urandom(4096))
    assert main(_score(env, model, tmp_path / "o")) == 2
    err = _err(capsys)
    assert "local.pt" in err and "cannot read checkpoint" in err
    assert not (tmp_path / "o" / "scores.csv").exists()


@pytest.mark.parametrize(
    "content", ["[1, 2, 3]", '{"threshold": NaN}', '{"threshold": Infinity}', '{"threshold": "high"}', "{not json"]
)
def test_damaged_threshold_json_recalibrates_with_a_warning(env, tmp_path, content):
    model = tmp_path / "m"
    shutil.copytree(env["both"], model)
    (model / THRESHOLD_JSON).write_text(content)
    with pytest.warns(UserWarning, match="threshold.json"):
        assert main(_score(env, model, tmp_path / "o")) == 0
    rec = json.loads((model / THRESHOLD_JSON).read_text())
    assert np.isfinite(rec["threshold"]) and rec["n_validation"] >= 1


# ---------------------------------------------------------------- output folders


def test_output_that_is_a_file_or_unwritable_fails_before_scoring(env, tmp_path, capsys):
    f = tmp_path / "taken"
    f.write_text("x")
    for verb in (_score(env, env["both"], f),
                 ["eval", "--model", str(env["both"]), "--data", str(env["data"]), "--category", CAT, "--out", str(f)],
                 _train(env, f)):  # fmt: skip
        assert main(verb) == 2
        assert "exists and is not a folder" in _err(capsys)
    # /proc refuses new folders even to root (a chmod'ed folder would not stop root)
    assert main(_score(env, env["both"], "/proc/igd_fast_no_such_dir")) == 2
    assert "is not writable" in _err(capsys)


def test_output_alias_and_help_examples(env, tmp_path, capsys):
    args = _score(env, env["both"], tmp_path / "o")
    args[args.index("--out")] = "--output"
    assert main(args) == 0 and (tmp_path / "o" / "scores.csv").is_file()
    for verb in ("train", "pretrain", "score", "eval", "demo", "bench", "export", "protocol"):
        with pytest.raises(SystemExit) as e:
            main([verb, "--help"])
        assert e.value.code == 0
        assert f"igd-fast {verb}" in capsys.readouterr().out.split("examples:")[-1]


# ---------------------------------------------------------------- bad values


@pytest.mark.parametrize(
    "extra, flag",
    [
        (["--batch-size", "0"], "--batch-size"),
        (["--backend", "bogus"], "--backend"),
        (["--threshold", "nan"], "--threshold"),
        (["--threshold", "inf"], "--threshold"),
        (["--workers", "-1"], "--workers"),
        (["--alpha", "1.5"], "--alpha"),
    ],
)
def test_score_bad_values(env, tmp_path, capsys, extra, flag):
    err = _parse_error(capsys, _score(env, env["both"], tmp_path / "o", *extra))
    assert flag in err


def test_residual_sigma_needs_the_maha_map(env, tmp_path, capsys):
    for argv in (_score(env, env["both"], tmp_path / "o", "--residual-sigma", "2"),
                 ["eval", "--model", str(env["both"]), "--data", str(env["data"]), "--category", CAT,
                  "--out", str(tmp_path / "e"), "--residual-sigma", "2", "--map-term", "abs"]):  # fmt: skip
        assert main(argv) == 2
        err = _err(capsys)
        assert "--residual-sigma" in err and "--map-term maha" in err and "--model" not in err
    assert not (tmp_path / "o" / "scores.csv").exists()


@pytest.mark.parametrize(
    "extra, flag",
    [
        (["--epochs", "-3"], "--epochs"),
        (["--latent", "0"], "--latent"),
        (["--width", "0"], "--width"),
        (["--patches-per-image", "-4"], "--patches-per-image"),
        (["--global-weights", "0.5", "-0.1", "0.6"], "--global-weights"),
        (["--micro-batch", "0"], "--micro-batch"),
        (["--val-fraction", "1.0"], "--val-fraction"),
        (["--lr", "nan"], "--lr"),
        (["--rho", "1.5"], "--rho"),
    ],
)
def test_train_bad_values(env, tmp_path, capsys, extra, flag):
    err = _parse_error(capsys, _train(env, tmp_path / "o", *extra))
    assert flag in err
    assert not (tmp_path / "o" / "global.pt").exists()


@pytest.mark.parametrize("device, text", [("cuda", "cuda"), ("cuda:3", "cuda"), ("gpu0", "invalid device 'gpu0'")])
def test_devices_this_machine_cannot_run(env, tmp_path, capsys, device, text):
    if torch.cuda.is_available() and device != "gpu0":
        pytest.skip("this machine has CUDA")
    for argv in (_score(env, env["both"], tmp_path / "o"), _train(env, tmp_path / "t")):
        if "--device" in argv:  # the tiny-model arguments pin cpu
            i = argv.index("--device")
            del argv[i : i + 2]
        assert main([*argv, "--device", device]) == 2
        err = _err(capsys)
        assert "--device" in err and text in err
    assert not (tmp_path / "t" / "global.pt").exists()


def test_config_errors_are_messages(env, tmp_path, capsys):
    # a weight list the argparse types let through but the config refuses (all zero)
    assert main(_train(env, tmp_path / "o", "--global-weights", "0", "0", "0")) == 2
    assert "not all 0" in _err(capsys)
    with pytest.raises(ValueError, match="latent must be an integer >= 1"):
        ModelConfig(latent=0)


# ---------------------------------------------------------------- resume


def test_resume_refuses_another_split_or_batch(env, tmp_path, capsys):
    out = tmp_path / "m"
    assert main(_train(env, out, "--seed", "1")) == 0
    capsys.readouterr()
    for extra, flag in ((["--seed", "2"], "--seed"), (["--seed", "1", "--batch-size", "3"], "--batch-size"),
                        (["--seed", "1", "--val-fraction", "0.4"], "--val-fraction")):  # fmt: skip
        argv = _train(env, out, *extra, "--resume")
        argv[argv.index("--epochs") + 1] = "2"
        if "--val-fraction" in extra:
            i = argv.index("--val-fraction")
            del argv[i : i + 2]
            argv += extra[-2:]
        assert main(argv) == 2
        err = _err(capsys)
        assert flag in err and "global.pt" in err
    # the checkpoint is untouched by the refused runs
    assert torch.load(out / "global.pt", weights_only=True)["epoch"] == 1
    # fewer epochs than done: nothing to do, said so, exit 0
    assert main(_train(env, out, "--seed", "1", "--resume")) == 0
    assert "nothing to do" in capsys.readouterr().out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_keeps_the_checkpoint_and_says_how_to_resume(env, tmp_path, sig):
    out = tmp_path / "m"
    argv = _train(env, out, "--epochs", "500", "--workers", "1")
    envv = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    proc = subprocess.Popen([sys.executable, "-m", "igd_fast", *argv], env=envv, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 400
    while not (out / "global.pt").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert (out / "global.pt").exists(), proc.communicate()[1][-2000:]
    time.sleep(0.5)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err[-2000:]
    assert "Traceback" not in err
    assert "interrupted" in err and "intact at epoch" in err and "--resume" in err
    ck = torch.load(out / "global.pt", weights_only=True)
    assert ck["epoch"] >= 1
    # the printed command resumes
    cmd = err.split("continue with: ")[1].strip().split()
    assert cmd[0] == "igd-fast" and cmd[-1] == "--resume"


# ---------------------------------------------------------------- inputs


def test_mask_of_another_size_is_refused_before_scoring(env, tmp_path, capsys):
    data = tmp_path / "d"
    shutil.copytree(env["data"], data)
    mask = sorted((data / CAT / "ground_truth").rglob("*_mask.png"))[0]
    Image.open(mask).resize((40, 30)).save(mask)
    code = main(["eval", "--model", str(env["both"]), "--data", str(data), "--category", CAT,
                 "--out", str(tmp_path / "e"), "--workers", "0"])  # fmt: skip
    assert code == 2
    err = _err(capsys)
    assert mask.name in err and "40×30" in err and "64×64" in err
    assert not (tmp_path / "e" / "report.json").exists()


def test_eval_and_score_list_subfolders_alike(env, tmp_path):
    data = tmp_path / "d"
    shutil.copytree(env["data"], data)
    bad = sorted((data / CAT / "test").iterdir())[0]  # a defect folder
    first = sorted(bad.glob("*.png"))[0]
    (bad / "batch2").mkdir()
    shutil.copy(first, bad / "batch2" / "x.png")
    gt = data / CAT / "ground_truth" / bad.name
    (gt / "batch2").mkdir()
    shutil.copy(gt / f"{first.stem}_mask.png", gt / "batch2" / "x_mask.png")
    samples = list_test_samples(data, CAT)
    assert bad / "batch2" / "x.png" in [s.path for s in samples]
    assert [s.mask for s in samples if s.path.name == "x.png"] == [gt / "batch2" / "x_mask.png"]
    from igd_fast.score import list_images

    assert sorted(s.path for s in samples) == list_images(data / CAT / "test")


def test_sixteen_bit_images_convert_by_bit_depth(tmp_path):
    rng = np.random.default_rng(0)
    img8 = rng.integers(0, 256, (40, 40), dtype=np.uint8)
    Image.fromarray(img8).save(tmp_path / "a8.png")
    Image.fromarray(img8.astype(np.uint16) * 257).save(tmp_path / "a16.png")  # the same picture at 16 bit
    darker = (img8.astype(np.uint16) * 257 // 2).astype(np.uint16)
    Image.fromarray(darker).save(tmp_path / "dark16.png")
    a8, a16, dark = (load_image(tmp_path / f, 32) for f in ("a8.png", "a16.png", "dark16.png"))
    assert Image.open(tmp_path / "a16.png").mode.startswith("I")
    torch.testing.assert_close(a16, a8, atol=1e-6, rtol=0)
    assert float((dark - a8).mean()) < -0.5  # darker stays darker (no per-image stretch)


def test_inputs_that_flatten_alike_keep_their_own_outputs(env, tmp_path):
    inp = tmp_path / "in"
    (inp / "sub").mkdir(parents=True)
    src = sorted((env["data"] / CAT / "test" / "good").glob("*.png"))
    shutil.copy(src[0], inp / "sub" / "x.png")
    shutil.copy(src[1], inp / "sub__x.png")
    out = tmp_path / "o"
    assert main(["score", "--model", str(env["both"]), "--input", str(inp), "--out", str(out), "--save-maps",
                 "--workers", "0", "--no-progress"]) == 0  # fmt: skip
    a, b = np.load(out / "maps" / "sub" / "x.png.npy"), np.load(out / "maps" / "sub__x.png.npy")
    assert not np.array_equal(a, b)
    assert (out / "overlays" / "sub" / "x.png.png").is_file() and (out / "overlays" / "sub__x.png.png").is_file()


def test_the_program_quiets_its_shutdown_only_after_a_clean_end():
    """After the command, the program ignores late signals and workers' disconnect noise;
    an error escaping the command keeps the handlers and hook it found (its traceback)."""
    from igd_fast.cli import interrupts

    hook, sigint, sigterm = sys.excepthook, signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(PermissionError):
        with interrupts(then_quiet=True):
            raise PermissionError("not worker noise")
    assert sys.excepthook is hook and signal.getsignal(signal.SIGINT) is sigint
    try:
        with interrupts(then_quiet=True):
            pass
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN and sys.excepthook is not hook
    finally:
        signal.signal(signal.SIGINT, sigint)
        signal.signal(signal.SIGTERM, sigterm)
        sys.excepthook = hook
