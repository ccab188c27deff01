"""The paper's baselines and ablations as variants of one loop: each trains,
checkpoints, resumes exactly and scores with the score its table row documents."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

from igd_fast import recon_loss
from igd_fast.data import MVTecDataset, make_synthetic_mvtec
from igd_fast.models import IGD, ModelConfig
from igd_fast.models.variants import SVDD_EPS, VARIANTS
from igd_fast.score import Scorer
from igd_fast.train import MStep, load_checkpoint, make_optimizers, train

SMALL = dict(kind="global", image_size=64, width=8, latent=16, blocks=(1, 1, 1, 1), win_size=3,
             weights=(0.3, 0.3, 0.4), estep_every=1)  # fmt: skip
FAST = dict(batch_size=4, workers=0, progress=False, device="cpu", val_fraction=0.25)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("variants")
    make_synthetic_mvtec(r, "synth", n_train=10, n_test_good=2, n_test_bad=2, size=64, seed=4)
    return r


def _images(root, n=4):
    ds = MVTecDataset(root, "synth", "test", 64)
    return torch.stack([ds[i]["image"] for i in range(n)])


def _expected_score(model: IGD, x: torch.Tensor) -> torch.Tensor:
    """The table's score, computed here from the model's parts without the package's
    scoring code."""
    cfg, v = model.config, model.config.method
    with torch.no_grad():
        z = model.encoder(x)
        d2 = ((z - model.descriptor.mu) ** 2).sum(1)
        lat = {"gac": 1 - torch.exp(-d2 / model.descriptor.sigma2), "svdd": d2, None: torch.zeros_like(d2)}[v.latent]
        if v.recon is None:
            return lat
        xh = model.decoder(z)
        if v.recon == "mse":
            return F.mse_loss(xh, x, reduction="none").mean((1, 2, 3)) + lat
        return recon_loss(x, xh, cfg.rho, cfg.msssim(), "none", "torch") + lat


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_trains_resumes_exactly_and_scores_its_formula(root, tmp_path, name):
    cfg = ModelConfig(**SMALL, variant=name)
    model = IGD(cfg)
    assert (model.decoder is None) == (name == "dsvdd") and (model.critic is None) == (name != "igd")
    if name.startswith("dsvdd"):  # bias-free encoder, as Deep SVDD requires
        assert model.encoder.proj.bias is None and model.encoder.bn1.weight is None
    full = train(cfg, root, "synth", tmp_path / "full", epochs=2, **FAST)
    train(cfg, root, "synth", tmp_path / "cut", epochs=1, **FAST)
    resumed = train(cfg, root, "synth", tmp_path / "cut", epochs=2, resume=True, **FAST)
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), (name, k)
    ck = load_checkpoint(tmp_path / "full" / "global.pt")
    assert ck["config"]["variant"] == name and ck["epoch"] == 2
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in ck["history"])
    if name.startswith("dsvdd"):
        # the centre was set once, from the initial embeddings, and kept away from 0
        assert (ck["mu"].abs() >= SVDD_EPS - 1e-7).all()
        first = load_checkpoint(tmp_path / "cut" / "global.pt")["mu"]
        torch.testing.assert_close(ck["mu"], first)

    scorer = Scorer(tmp_path / "full", device="cpu")
    x = _images(root)
    out = scorer.score_batch(x)
    torch.testing.assert_close(out.score, _expected_score(scorer.global_model, x), rtol=1e-4, atol=1e-5)
    assert (out.maps is None) == (name == "dsvdd")
    assert scorer.calibration()["threshold"] > 0


def test_micro_batches_give_the_one_batch_gradient(root):
    """Gradient accumulation over micro-batches equals one big batch (up to rounding)
    when BatchNorm statistics do not enter: eval-mode BN, pairs within each half."""
    cfg = ModelConfig(**{**SMALL, "gamma": 0.2})
    torch.manual_seed(0)
    a = IGD(cfg)
    b = IGD(cfg)
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    x = _images(root, 4)
    grads = []
    for model, mb in ((a, None), (b, 2)):
        step = MStep(model, *make_optimizers(model), micro_batch=mb)
        # the pairing of the one-batch run is made to match the micro-batches' pairing
        step.ae.forward = _paired_within(step.ae, 2)
        terms = step(x, torch.Generator().manual_seed(1))
        grads.append((terms, [p.grad.clone() for p in model.encoder.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-6)
    for ga, gb in zip(grads[0][1], grads[1][1], strict=True):
        torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-6)


def _paired_within(ae, group: int):
    """AutoEncoderStep.forward with z rolled within groups of ``group`` samples."""

    def forward(x, alpha):
        z = ae.encoder(x)
        x_hat = ae.decoder(z)
        zr = torch.cat([c.roll(1, 0) for c in z.split(group)])
        return z, x_hat, ae.decoder(alpha * z + (1 - alpha) * zr)

    return forward


def test_unknown_variant_is_named():
    with pytest.raises(ValueError, match="unknown variant 'svdd'; choose one of mse, rec"):
        ModelConfig(variant="svdd")


def test_old_checkpoints_without_variant_load_as_igd(root, tmp_path):
    cfg = ModelConfig(**SMALL)
    train(cfg, root, "synth", tmp_path / "m", epochs=0, **FAST)
    path = tmp_path / "m" / "global.pt"
    ck = torch.load(path, weights_only=True)
    del ck["config"]["variant"]
    torch.save(ck, path)
    shutil.rmtree(tmp_path / "m" / "eval", ignore_errors=True)
    assert Scorer(tmp_path / "m", device="cpu").global_model.config.variant == "igd"
