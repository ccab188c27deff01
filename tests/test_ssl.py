"""Self-supervised pre-training: NT-Xent against a plain loop, the augmentations, the
pretrain CLI and its file, train --init-encoder from it, and train --preset."""

from __future__ import annotations

import json
import math

import pytest
import torch
from _cli import TINY_MODEL_ARGS

from igd_fast.cli import build_parser, main
from igd_fast.cli.presets import PRESETS, Default, apply_preset
from igd_fast.data import IMAGENET_MEAN, IMAGENET_STD, list_train_files, make_synthetic_mvtec, split_train_val
from igd_fast.models import AugmentConfig, augment, nt_xent
from igd_fast.models.ssl import SSL_FORMAT

CAT = "synth"
# tiny encoders; 3 global MS-SSIM scales fit 64² with the 11×11 window
ARCH = ["--image-size", "64", "--width", "8", "--blocks", "1", "1", "1", "1", "--latent", "16"]
FAST = ["--batch-size", "4", "--workers", "0", "--no-progress", "--device", "cpu", "--seed", "1"]


def nt_xent_loop(z1: torch.Tensor, z2: torch.Tensor, t: float) -> float:
    """SimCLR's loss written out view by view, in float64."""
    z = torch.cat([z1, z2]).double()
    z = z / z.norm(dim=1, keepdim=True)
    n2 = z.shape[0]
    total = 0.0
    for i in range(n2):
        p = (i + n2 // 2) % n2
        sims = [math.exp(float(z[i] @ z[k]) / t) for k in range(n2) if k != i]
        total += -math.log(math.exp(float(z[i] @ z[p]) / t) / sum(sims))
    return total / n2


@pytest.mark.parametrize("n, d, t", [(1, 3, 0.5), (4, 8, 0.5), (7, 5, 0.1), (3, 16, 2.0)])
def test_nt_xent_equals_the_loop(n, d, t):
    g = torch.Generator().manual_seed(n * 100 + d)
    z1, z2 = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    assert float(nt_xent(z1, z2, t)) == pytest.approx(nt_xent_loop(z1, z2, t), rel=1e-5, abs=1e-6)


def test_nt_xent_hand_case_and_gradient():
    # two pairs of identical unit vectors, the pairs orthogonal: each view's candidates
    # are its partner (cos 1) and two others (cos 0) -> loss = log(1 + 2 e^{-1/t})
    z = torch.eye(2)
    assert float(nt_xent(z, z.clone(), 0.5)) == pytest.approx(math.log(1 + 2 * math.exp(-2.0)), rel=1e-6)
    # swapped partners (each view's positive is the orthogonal one) must cost more
    assert float(nt_xent(z, z.flip(0), 0.5)) > float(nt_xent(z, z, 0.5)) + 1.0
    z1 = torch.randn(5, 4, requires_grad=True)
    nt_xent(z1, torch.randn(5, 4)).backward()
    assert z1.grad is not None and torch.isfinite(z1.grad).all()
    with pytest.raises(ValueError):
        nt_xent(torch.randn(3, 4), torch.randn(2, 4))


def _images(n=6, s=32, dtype=torch.float32):
    x = torch.rand(n, 3, s, s, generator=torch.Generator().manual_seed(5))
    m, sd = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((x - m) / sd).to(dtype)


def _aug(x, seed, cfg=None):
    return augment(x, torch.Generator().manual_seed(seed), IMAGENET_MEAN, IMAGENET_STD, cfg)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_augment_shape_dtype_seed(dtype):
    x = _images(dtype=dtype)
    a, b, c = _aug(x, 0), _aug(x, 0), _aug(x, 1)
    assert a.shape == x.shape and a.dtype == dtype
    assert torch.equal(a, b)  # same seed, same views
    assert not torch.allclose(a, c)  # another seed, other views
    assert not torch.allclose(a, x)
    # per-sample draws: the same image repeated gets different views
    rep = _aug(x[:1].expand(4, -1, -1, -1).contiguous(), 3)
    assert not torch.allclose(rep[0], rep[1]) and not torch.allclose(rep[2], rep[3])
    # values stay valid normalised pixels
    m, sd = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    px = a.float() * sd + m
    assert px.min() >= -1e-5 and px.max() <= 1 + 1e-5


def test_augment_identity_and_flip_are_exact():
    x = _images()
    none = AugmentConfig(min_scale=1.0, ratio=(1.0, 1.0), hflip=0.0, vflip=0.0, jitter_p=0.0, gray_p=0.0)
    torch.testing.assert_close(_aug(x, 0, none), x, rtol=0, atol=1e-5)
    both = AugmentConfig(min_scale=1.0, ratio=(1.0, 1.0), hflip=1.0, vflip=1.0, jitter_p=0.0, gray_p=0.0)
    torch.testing.assert_close(_aug(x, 0, both), x.flip(2, 3), rtol=0, atol=1e-5)
    gray = AugmentConfig(min_scale=1.0, ratio=(1.0, 1.0), hflip=0.0, vflip=0.0, jitter_p=0.0, gray_p=1.0)
    g = _aug(x, 0, gray).float() * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(
        1, 3, 1, 1
    )
    torch.testing.assert_close(g[:, 0], g[:, 1], rtol=0, atol=1e-5)  # grayscale: equal channels


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ssl") / "data"
    make_synthetic_mvtec(root, CAT, n_train=8, n_test_good=2, n_test_bad=2, size=64, seed=3)
    return root


@pytest.fixture(scope="module")
def enc(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("enc") / "enc.pt"
    rc = main(["pretrain", "--data", str(data), "--category", CAT, "--out", str(out), "--epochs", "1",
               "--patches-per-image", "2", "--val-fraction", "0.25", *ARCH, *FAST])  # fmt: skip
    assert rc == 0
    return out


def test_pretrain_file_is_loadable_and_records_its_run(enc):
    f = torch.load(enc, weights_only=True)
    assert f["format"] == SSL_FORMAT and set(f["encoders"]) == {"global", "local"}
    for kind, e in f["encoders"].items():
        assert e["arch"] == {"kind": kind, "input_size": 64 if kind == "global" else 32, "width": 8,
                             "blocks": [1, 1, 1, 1], "latent": 16, "bias_free": False}  # fmt: skip
        assert e["epochs_done"] == 1 and len(e["history"]) == 1 and math.isfinite(e["history"][0]["loss"])
        assert "proj.weight" in e["state_dict"] and not any(k.startswith("net.") for k in e["state_dict"])
    s = f["pretrain"]
    assert (s["lr"], s["momentum"], s["temperature"], s["batch_size"], s["seed"]) == (0.01, 0.9, 0.5, 4, 1)


def test_pretrain_never_loads_the_validation_normals(data, tmp_path, monkeypatch):
    from igd_fast.data import MVTecDataset
    from igd_fast.models import ModelConfig
    from igd_fast.train.pretrain import PretrainOptions, pretrain

    seen = []
    orig = MVTecDataset.__getitem__
    monkeypatch.setattr(MVTecDataset, "__getitem__", lambda self, i: seen.append(self.files[i]) or orig(self, i))
    cfg = ModelConfig(kind="global", image_size=64, width=8, blocks=(1, 1, 1, 1), latent=16, weights=(1.0,))
    pretrain([cfg], data, CAT, tmp_path / "e.pt", PretrainOptions(epochs=2, batch_size=4, workers=0, seed=1,
                                                                 val_fraction=0.25, progress=False))  # fmt: skip
    tr, va = split_train_val(list_train_files(data, CAT), 0.25, 1)
    assert va and {p.resolve() for p in seen} == {p.resolve() for p in tr}
    # the same split as train's run.json with the same flags
    rec = torch.load(tmp_path / "e.pt", weights_only=True)["run"]
    assert main(["train", "--data", str(data), "--category", CAT, "--out", str(tmp_path / "m"), "--model", "global",
                 "--preset", "paper", "--epochs", "0", "--val-fraction", "0.25", "--global-weights", "0.3", "0.3",
                 "0.4", *ARCH, *FAST]) == 0  # fmt: skip
    run = json.loads((tmp_path / "m" / "run.json").read_text())
    assert sorted(rec["val_files"]) == sorted(run["val_files"]) and rec["train_files"] == run["train_files"]


def test_pretrain_interrupted_keeps_finished_epochs(data, tmp_path, monkeypatch):
    from igd_fast.models import ModelConfig
    from igd_fast.train import TrainingInterrupted
    from igd_fast.train import pretrain as mod

    real, calls = mod._epoch, []

    def stop_in_second(job, batches, epoch):
        calls.append(epoch)
        if epoch == 1:
            raise KeyboardInterrupt
        return real(job, batches, epoch)

    monkeypatch.setattr(mod, "_epoch", stop_in_second)
    cfg = ModelConfig(kind="local", image_size=64, width=8, blocks=(1, 1, 1, 1), latent=16)
    with pytest.raises(TrainingInterrupted) as e:
        mod.pretrain([cfg], data, CAT, tmp_path / "e.pt", mod.PretrainOptions(epochs=5, batch_size=4, workers=0,
                                                                            progress=False))  # fmt: skip
    assert e.value.epoch == 1 and calls == [0, 1]
    f = torch.load(tmp_path / "e.pt", weights_only=True)
    assert f["encoders"]["local"]["epochs_done"] == 1 and f["encoders"]["local"]["epochs"] == 5


def _train(data, out, *extra):
    return ["train", "--data", str(data), "--category", CAT, "--out", str(out), "--preset", "paper", "--epochs", "0",
            "--val-fraction", "0.25", "--global-weights", "0.3", "0.3", "0.4", *FAST, *extra]  # fmt: skip


def test_train_init_encoder_loads_exactly_the_pretrained_weights(data, enc, tmp_path):
    from igd_fast.train import load_model

    assert main(_train(data, tmp_path / "m", *ARCH, "--init-encoder", str(enc))) == 0
    f = torch.load(enc, weights_only=True)
    run = json.loads((tmp_path / "m" / "run.json").read_text())
    for kind in ("global", "local"):
        model = load_model(tmp_path / "m" / f"{kind}.pt")
        stored = f["encoders"][kind]["state_dict"]
        params = dict(model.encoder.named_parameters())
        assert params and set(params) <= set(stored)
        for k, v in params.items():  # every weight; BatchNorm running stats are recalibrated by train
            assert torch.equal(v.detach(), stored[k]), (kind, k)
        info = run["models"][kind]["init_encoder"]
        assert info["format"] == SSL_FORMAT and info["path"] == str(enc) and info["epochs_done"] == 1
    # a scratch run with the same seed starts elsewhere: the comparison above can fail
    assert main(_train(data, tmp_path / "s", *ARCH, "--model", "local")) == 0
    scratch = load_model(tmp_path / "s" / "local.pt").encoder.conv1.weight
    assert not torch.equal(scratch, f["encoders"]["local"]["state_dict"]["conv1.weight"])


@pytest.mark.parametrize(
    "arch, words",
    [
        (["--width", "16", "--blocks", "1", "1", "1", "1", "--latent", "16"], "width 8 in the file, 16 here"),
        (["--width", "8", "--blocks", "1", "1", "1", "1", "--latent", "32"], "latent 16 in the file, 32 here"),
        (["--width", "8", "--blocks", "2", "1", "1", "1", "--latent", "16"],
         "blocks [1, 1, 1, 1] in the file, [2, 1, 1, 1] here"),
    ],
)  # fmt: skip
def test_train_init_encoder_mismatch_exits_2_naming_it(data, enc, tmp_path, capsys, arch, words):
    assert main(_train(data, tmp_path / "m", "--image-size", "64", *arch, "--init-encoder", str(enc))) == 2
    err = capsys.readouterr().err
    assert words in err and "--init-encoder" in err
    assert not (tmp_path / "m" / "global.pt").exists()  # checked before anything trains


def test_train_init_encoder_kind_mismatch_exits_2(data, tmp_path, capsys):
    g = tmp_path / "g.pt"
    assert main(["pretrain", "--data", str(data), "--category", CAT, "--out", str(g), "--epochs", "0",
                 "--model", "global", *ARCH, *FAST]) == 0  # fmt: skip
    assert main(_train(data, tmp_path / "m", *ARCH, "--init-encoder", str(g))) == 2
    err = capsys.readouterr().err
    assert "not one for the local model" in err and "model kind mismatch" in err
    assert not (tmp_path / "m" / "global.pt").exists()
    assert main(_train(data, tmp_path / "m", *ARCH, "--init-encoder", str(tmp_path / "nope.pt"))) == 2
    assert "does not exist" in capsys.readouterr().err


def test_every_preset_key_is_a_sentinel_flag_of_its_verb():
    sub = build_parser()._subparsers._group_actions[0].choices
    for verb, presets in PRESETS.items():
        defaults = {a.dest: a.default for a in sub[verb]._actions}
        for name, values in presets.items():
            for key in values:
                assert isinstance(defaults.get(key), Default), (verb, name, key)


def test_preset_cpu_values_and_an_explicit_override(data, tmp_path):
    ns = build_parser().parse_args(["train", "--out", "x", "--preset", "cpu", "--epochs", "3"])
    applied = apply_preset(ns, "train")
    assert (ns.model, ns.image_size, ns.width, list(ns.blocks), ns.patches_per_image, ns.rho) == (
        "global+defect", 128, 16, [1, 1, 1, 1], 32, 1.0)  # fmt: skip
    assert list(ns.global_weights) == PRESETS["train"]["cpu"]["global_weights"]
    assert ns.epochs == 3 and "epochs" not in applied  # explicit wins, even at the preset's own value
    ns = build_parser().parse_args(["train", "--out", "x", "--preset", "cpu", "--epochs", "36"])
    assert "epochs" not in apply_preset(ns, "train")
    ns = build_parser().parse_args(["train", "--out", "x", "--preset", "paper"])
    assert apply_preset(ns, "train") == {} and (ns.image_size, ns.epochs, ns.global_weights) == (256, 256, None)
    assert build_parser().parse_args(["train", "--out", "x"]).preset == "auto"  # the default picks cpu or cpu-texture
    with pytest.raises(AssertionError, match="resolved"):  # auto names no values of its own
        apply_preset(build_parser().parse_args(["train", "--out", "x"]), "train")
    # through the CLI: recorded in run.json, the explicit --width beats the preset's 16
    out = tmp_path / "m"
    assert main(["train", "--data", str(data), "--category", CAT, "--out", str(out), "--preset", "cpu", "--epochs",
                 "0", "--width", "8", "--model", "global", *FAST]) == 0  # fmt: skip
    models = json.loads((out / "run.json").read_text())["models"]
    assert list(models) == ["global"] and not (out / "local.pt").exists()  # the preset's global model, no defect model
    m = models["global"]
    assert m["config"]["width"] == 8 and m["config"]["image_size"] == 128 and m["config"]["blocks"] == [1, 1, 1, 1]
    assert m["config"]["weights"] == PRESETS["train"]["cpu"]["global_weights"] and m["config"]["rho"] == 1.0
    assert m["options"]["preset"] == "cpu" and m["options"]["patches_per_image"] == 32
    assert "width" not in m["options"]["preset_applied"] and m["options"]["preset_applied"]["image_size"] == 128
    # the scoring recipe the preset names for the global model alone, for score / eval / export to use by default
    rec = json.loads((out / "recipe.json").read_text())
    assert rec["preset"] == "cpu" and (rec["values"]["map_term"], rec["values"]["map_sigma"]) == ("maha", 4.0)
    assert rec["sources"]["map_sigma"] == "preset" and rec["sources"]["score_norm"] == "default"


def test_preset_cpu_texture_trains_the_local_and_defect_models(data, tmp_path):
    ns = build_parser().parse_args(["train", "--out", "x", "--preset", "cpu-texture", "--lr", "2e-3"])
    applied = apply_preset(ns, "train")
    assert (ns.model, ns.image_size, ns.patches_per_image, ns.rho, ns.lr, ns.lr_schedule) == (
        "local+defect", 256, 64, 1.0, 2e-3, "cosine")  # fmt: skip
    assert "lr" not in applied and applied["model"] == "local+defect"
    ns = build_parser().parse_args(["train", "--out", "x", "--preset", "paper"])
    apply_preset(ns, "train")
    assert (ns.model, ns.rho, ns.lr, ns.lr_schedule) == ("both", 0.15, 1e-4, "constant")  # the paper's
    out = tmp_path / "t"
    assert main(["train", "--data", str(data), "--category", CAT, "--out", str(out), "--preset", "cpu-texture",
                 "--epochs", "0", "--image-size", "64", "--defect-size", "32", "--defect-steps", "2",
                 *FAST]) == 0  # fmt: skip
    models = json.loads((out / "run.json").read_text())["models"]
    assert set(models) == {"local", "defect"} and not (out / "global.pt").exists()
    c = models["local"]["config"]
    assert (c["rho"], c["lr"], c["lr_schedule"], c["width"], c["image_size"]) == (1.0, 1e-3, "cosine", 16, 64)
    rec = json.loads((out / "recipe.json").read_text())["values"]
    assert (rec["image_score"], rec["score_norm"], rec["map_norm"]) == ("component-excess", "max", "standard")
    # the local model alone: its own recipe (the excess of its map)
    out = tmp_path / "l"
    assert main(["train", "--data", str(data), "--category", CAT, "--out", str(out), "--preset", "cpu-texture",
                 "--model", "local", "--epochs", "0", "--image-size", "64", *FAST]) == 0  # fmt: skip
    assert list(json.loads((out / "run.json").read_text())["models"]) == ["local"]
    rec = json.loads((out / "recipe.json").read_text())["values"]
    assert (rec["image_score"], rec["score_norm"], rec["map_norm"]) == ("map-excess", "sum", "sum")


def test_pretrain_preset_matches_train_preset_architecture():
    ns = build_parser().parse_args(["pretrain", "--out", "e.pt", "--preset", "cpu"])
    apply_preset(ns, "pretrain")
    tr = PRESETS["train"]["cpu"]
    # the defect model has no encoder to pre-train: the global model's
    assert (ns.model, ns.image_size, ns.width, list(ns.blocks)) == ("global", tr["image_size"], tr["width"],
                                                                    tr["blocks"])  # fmt: skip
    ns = build_parser().parse_args(["pretrain", "--out", "e.pt", "--preset", "cpu", "--model", "both"])
    apply_preset(ns, "pretrain")
    assert ns.model == "both"  # explicit wins
    ns = build_parser().parse_args(["pretrain", "--out", "e.pt"])
    apply_preset(ns, "pretrain")
    assert ns.model == "both"  # the flag's own default without a preset


def test_tiny_model_args_still_fit():
    # the shared tiny args parse for train with Default sentinels in place
    ns = build_parser().parse_args(["train", "--out", "x", *TINY_MODEL_ARGS])
    apply_preset(ns, "train")
    assert ns.width == 8 and ns.image_size == 64 and ns.epochs == 256
