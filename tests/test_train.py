"""igd_fast.train: M-step lowers the loss, checkpoints, exact resume, torchrun E-step,
bad-input messages (CLI), NaN stop with the checkpoint intact."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from _cli import TINY_MODEL_ARGS, torchrun

from igd_fast.cli import main as cli_main
from igd_fast.data import CorruptImageError, MVTecDataset, make_synthetic_mvtec
from igd_fast.models import IGD, ModelConfig
from igd_fast.train import (
    MStep,
    NonFiniteLossError,
    TrainingInterrupted,
    default_recon_fn,
    load_checkpoint,
    load_model,
    make_optimizers,
    model_inputs,
    read_run,
    train,
    validation_files,
)

# blocks (1, 1, 1, 1): half the layers; these tests are bound by per-op overhead
GLOBAL_SMALL = {
    "image_size": 64,
    "width": 8,
    "latent": 16,
    "win_size": 3,
    "weights": (0.3, 0.3, 0.4),
    "blocks": (1, 1, 1, 1),
}
LOCAL_SMALL = {"kind": "local", "image_size": 64, "width": 8, "latent": 16, "blocks": (1, 1, 1, 1)}
# CPU even where a GPU exists: bitwise-exact resume needs deterministic kernels
FAST = {"batch_size": 4, "workers": 0, "progress": False, "device": "cpu"}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("data")
    make_synthetic_mvtec(r, "synth", n_train=10, n_test_good=2, n_test_bad=2, size=64, seed=0)
    return r


@pytest.mark.parametrize("kw", [GLOBAL_SMALL, LOCAL_SMALL], ids=["global", "local"])
def test_few_steps_lower_the_loss(root, kw):
    torch.manual_seed(0)
    cfg = ModelConfig(**kw, lr=2e-3)
    model = IGD(cfg)
    ds = MVTecDataset(root, "synth", "train_all", 64)
    images = torch.stack([ds[i]["image"] for i in range(4)])
    x = model_inputs(images, cfg)
    step = MStep(model, *make_optimizers(model))
    gen = torch.Generator().manual_seed(0)
    terms = [step(x, gen) for _ in range(6)]
    l_r = [float(t[0]) for t in terms]
    assert all(torch.isfinite(t).all() for t in terms)
    assert sum(l_r[-2:]) / 2 < 0.9 * l_r[0], l_r


@pytest.mark.parametrize("kw", [GLOBAL_SMALL, LOCAL_SMALL], ids=["global", "local"])
def test_bf16_amp_step_matches_fp32(root, kw):
    # train --amp: bf16 autocast networks, fp32 master weights and loss kernels. From the same
    # weights on the same batch, the step's losses agree with fp32 to bf16's rounding (a few
    # per mille measured; 2 % allowed) and the weights stay fp32
    cfg = ModelConfig(**kw)
    ds = MVTecDataset(root, "synth", "train_all", 64)
    x = model_inputs(torch.stack([ds[i]["image"] for i in range(4)]), cfg)
    torch.manual_seed(0)
    ref = IGD(cfg)
    losses, models = {}, {}
    for amp in (None, torch.bfloat16):
        model = IGD(cfg)
        model.load_state_dict(ref.state_dict())
        step = MStep(model, *make_optimizers(model), amp_dtype=amp)
        losses[amp] = step(x, torch.Generator().manual_seed(0))
        models[amp] = model
    (l32, l16) = losses.values()
    assert torch.isfinite(l16).all()
    # l_r, l_h and the total; the critic's terms are near 0 at the start and not compared relatively
    for i in (0, 1, 4):
        assert float(l16[i]) == pytest.approx(float(l32[i]), rel=0.02), (i, l32, l16)
    assert all(p.dtype == torch.float32 for p in models[torch.bfloat16].parameters())
    moved = [not torch.equal(a, b) for a, b in zip(models[torch.bfloat16].parameters(), ref.parameters(), strict=True)]
    assert any(moved)  # the bf16 step did update the fp32 weights


@pytest.fixture(scope="module")
def one_epoch(root, tmp_path_factory):
    """A global model trained for 1 epoch (estep_every=1: the resume test crosses an E-step)."""
    out = tmp_path_factory.mktemp("one_epoch")
    cfg = ModelConfig(**GLOBAL_SMALL, estep_every=1, gamma=None)
    return cfg, out, train(cfg, root, "synth", out, epochs=1, **FAST)


def test_checkpoint_roundtrip_and_run_json(one_epoch):
    cfg, out, res = one_epoch
    ck = load_checkpoint(out / "global.pt")  # weights_only=True inside
    assert ck["epoch"] == 1 and ck["global_step"] == 2 and ck["config"] == cfg.to_dict()
    assert ck["opt_ae"]["state"] and ck["opt_critic"]["state"]
    assert set(ck["rng"]) >= {"torch", "numpy", "python"}
    m = load_model(out / "global.pt", map_location="cpu")
    assert not m.training and m.config == cfg
    for k, v in res.model.state_dict().items():
        assert torch.equal(m.state_dict()[k], v), k
    assert torch.equal(m.descriptor.mu, ck["mu"]) and float(m.descriptor.sigma2) > 0
    run = read_run(out)
    assert run["category"] == "synth" and run["seed"] == 0 and len(run["val_files"]) == 1
    assert run["models"]["global"]["config"] == cfg.to_dict()
    assert all(p.is_file() for p in validation_files(out))
    assert (out / "global_log.csv").read_text().splitlines()[0].startswith("epoch,")
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temp files


def test_checkpoint_load_is_weights_only(tmp_path):
    bad = tmp_path / "evil.pt"
    torch.save({"format": "igd_fast.checkpoint/1", "x": Path("/")}, bad)
    with pytest.raises(Exception, match="(?i)weights_only|unsupported global"):
        load_checkpoint(bad)


def test_resume_matches_uninterrupted_run(root, one_epoch, tmp_path):
    cfg, out, _ = one_epoch
    full = train(cfg, root, "synth", tmp_path / "full", epochs=2, **FAST)
    shutil.copytree(out, tmp_path / "cut")  # the run "interrupted" after epoch 1
    resumed = train(cfg, root, "synth", tmp_path / "cut", epochs=2, resume=True, **FAST)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ca, cb = load_checkpoint(tmp_path / "full" / "global.pt"), load_checkpoint(tmp_path / "cut" / "global.pt")
    assert ca["epoch"] == cb["epoch"] == 2
    assert [r["loss"] for r in ca["history"]] == [r["loss"] for r in cb["history"]]
    with pytest.raises(ValueError, match="another model config"):
        train(
            ModelConfig(**{**GLOBAL_SMALL, "latent": 8}), root, "synth", tmp_path / "cut", epochs=3, resume=True, **FAST
        )
    # a checkpoint that records no preset (the paper's defaults) resumed under another preset: the way back named
    with pytest.raises(ValueError, match="trained with --preset paper: resume with --preset paper"):
        train(ModelConfig(**{**GLOBAL_SMALL, "rho": 1.0}), root, "synth", tmp_path / "cut", epochs=3, resume=True,
              preset="cpu", **FAST)  # fmt: skip


def test_checkpoint_from_before_lr_schedule_resumes(root, one_epoch, tmp_path):
    cfg, out, _ = one_epoch
    shutil.copytree(out, tmp_path / "old")
    path = tmp_path / "old" / "global.pt"
    ck = load_checkpoint(path)
    del ck["config"]["lr_schedule"]  # as written before the field existed
    torch.save(ck, path)
    res = train(cfg, root, "synth", tmp_path / "old", epochs=2, resume=True, **FAST)
    assert [r["epoch"] for r in res.history] == [1, 2] and res.history[-1]["lr"] == cfg.lr


def test_cosine_schedule_sets_each_epochs_lr_and_resumes_exactly(root, tmp_path):
    cfg = ModelConfig(**GLOBAL_SMALL, lr=2e-3, lr_schedule="cosine", gamma=None)
    base = default_recon_fn(cfg)
    calls = []

    def counting(x, x_hat):
        calls.append(1)
        return base(x, x_hat)

    train(cfg, root, "synth", tmp_path / "count", epochs=1, recon_fn=counting, **FAST)
    per_epoch = len(calls)

    def interrupt_in_epoch_3(x, x_hat):
        calls.append(1)
        if len(calls) > 2 * per_epoch:
            raise KeyboardInterrupt
        return base(x, x_hat)

    calls.clear()
    with pytest.raises(TrainingInterrupted) as e:
        train(cfg, root, "synth", tmp_path / "cut", epochs=4, recon_fn=interrupt_in_epoch_3, **FAST)
    assert e.value.epoch == 2
    resumed = train(cfg, root, "synth", tmp_path / "cut", epochs=4, resume=True, **FAST)
    full = train(cfg, root, "synth", tmp_path / "full", epochs=4, **FAST)
    # lr (1 + cos(pi e / 4)) / 2 at epochs e = 0..3, by hand
    want = [2e-3, 2e-3 * (1 + 2**-0.5) / 2, 1e-3, 2e-3 * (1 - 2**-0.5) / 2]
    for res in (full, resumed):
        assert [r["lr"] for r in res.history] == pytest.approx(want, rel=1e-12)
    ck = load_checkpoint(tmp_path / "cut" / "global.pt")
    assert [g["lr"] for g in ck["opt_ae"]["param_groups"] + ck["opt_critic"]["param_groups"]] == pytest.approx(
        [want[-1]] * 2, rel=1e-12
    )
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    with pytest.raises(ValueError, match="lr_schedule must be one of constant, cosine"):
        ModelConfig(lr_schedule="step")


def test_nan_loss_stops_with_step_and_terms_checkpoint_intact(root, one_epoch, tmp_path):
    cfg, out, _ = one_epoch
    shutil.copytree(out, tmp_path / "m")
    path = tmp_path / "m" / "global.pt"
    before = hashlib.sha256(path.read_bytes()).hexdigest()

    def nan_recon(x, x_hat):
        return (x_hat - x).abs().mean() * float("nan")

    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 1 .*l_r=nan, l_h=[0-9.e-]+, .*global.pt \(epoch 1\)"):
        train(cfg, root, "synth", tmp_path / "m", epochs=2, resume=True, recon_fn=nan_recon, **FAST)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert load_checkpoint(path)["epoch"] == 1


def test_cli_bad_inputs_give_their_messages(root, tmp_path, capsys):
    (tmp_path / "empty" / "train" / "good").mkdir(parents=True)
    args = [
        "train",
        "--data",
        str(tmp_path),
        "--out",
        str(tmp_path / "o"),
        "--epochs",
        "1",
        "--workers",
        "0",
        "--model",
        "local",
        *TINY_MODEL_ARGS,
    ]
    assert cli_main([*args, "--category", "empty"]) == 2
    err = capsys.readouterr().err
    assert "holds no image files" in err and "expected the MVTec AD layout" in err

    shutil.copytree(root / "synth", tmp_path / "bad")
    broken = tmp_path / "bad" / "train" / "good" / "003.png"
    broken.write_bytes(b"garbage")
    assert cli_main([*args, "--category", "bad", "--seed", "1"]) == 2
    assert "cannot read image file" in (err := capsys.readouterr().err) and str(broken) in err, err
    with pytest.raises(CorruptImageError, match="003.png"):
        train(ModelConfig(**LOCAL_SMALL), tmp_path, "bad", tmp_path / "o2", epochs=1, **FAST)
    with pytest.warns(UserWarning, match="skipping .*003.png"):
        assert cli_main([*args, "--category", "bad", "--skip-corrupt", "--epochs", "0"]) == 0
    assert "local: wrote" in capsys.readouterr().out
    assert "bad/train/good/003.png" not in str(read_run(tmp_path / "o")["train_files"])


def _ckpt_stats(path):
    ck = load_checkpoint(path)
    return ck["mu"], ck["sigma2"]


def test_torchrun_two_processes_same_mu_sigma_as_one(root, tmp_path):
    args = [
        "train",
        "--data",
        str(root),
        "--category",
        "synth",
        "--model",
        "local",
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--workers",
        "1",
        *TINY_MODEL_ARGS,
    ]
    assert cli_main([*args, "--out", str(tmp_path / "one")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(
        torchrun(*args, "--out", str(tmp_path / "two")),
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    mu1, s1 = _ckpt_stats(tmp_path / "one" / "local.pt")
    mu2, s2 = _ckpt_stats(tmp_path / "two" / "local.pt")
    # the checkpoint's mu/sigma come from the E-step at the start (estep_every=10) over
    # the same weights: sharded sums all-reduced must give the single-process values
    torch.testing.assert_close(mu2, mu1, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(s2, s1, rtol=1e-6, atol=1e-7)
    ck = load_checkpoint(tmp_path / "two" / "local.pt")
    assert ck["epoch"] == 1 and ck["history"][0]["images"] == 8  # 2 ranks × 2 steps × 2 images


def test_train_with_encoder_init_and_distillation(root, tmp_path):
    from igd_fast.models import ResNetTrunk

    torch.manual_seed(3)
    teacher = ResNetTrunk(64, (2, 2, 2, 2))
    sd = {**teacher.state_dict(), "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}
    torch.save(sd, tmp_path / "r18.pth")
    cfg = ModelConfig(kind="local", image_size=64, latent=16)  # width 64, ResNet-18 blocks
    res = train(cfg, root, "synth", tmp_path / "a", epochs=0, init_encoder=str(tmp_path / "r18.pth"), **FAST)
    # BN running stats are recalibrated before the first E-step; the weights stay the file's
    for k in ("conv1.weight", "layer3.1.conv2.weight", "layer4.0.downsample.0.weight"):
        assert torch.equal(res.model.encoder.state_dict()[k], sd[k]), k
    small = ModelConfig(**LOCAL_SMALL)
    torch.manual_seed(0)  # train() seeds 0 too: the same initial encoder, before distillation
    before = IGD(small).encoder.state_dict()
    res = train(
        small,
        root,
        "synth",
        tmp_path / "b",
        epochs=0,
        distill_teacher=str(tmp_path / "r18.pth"),
        distill_steps=2,
        **FAST,
    )
    assert not torch.equal(res.model.encoder.conv1.weight, before["conv1.weight"])
    with pytest.raises(ValueError, match="needs width=64"):
        train(small, root, "synth", tmp_path / "c", epochs=0, init_encoder=str(tmp_path / "r18.pth"), **FAST)
