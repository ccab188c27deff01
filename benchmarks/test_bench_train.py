"""Training throughput (SPEC section 3, issue 5): images/s of one full M-step
(autoencoder + critic update) of the global and the local IGD model.

    pytest benchmarks/test_bench_train.py --benchmark-only --benchmark-group-by=group -s

Same model, optimisers, batch and loop on both sides; only l_r's MS-SSIM differs:

* peer: ``pytorch_msssim`` 1.0 (what the published IGD code used). Its ``ms_ssim``
  refuses the local configuration (it asserts side > (win-1)·2^4 whatever the number of
  scales), so for the local model the peer runs pytorch_msssim's own per-scale
  ``_ssim`` in its ``ms_ssim`` loop with the 4 LOCAL weights;
* ours: ``igd_fast.recon_loss`` (fused kernels, default backend of the device).

CPU sizes are small so the file runs in about a minute on 2 cores (global: 4 images of
192² — the smallest multiple of 32 the 5-scale 11×11 config accepts — width 16; local:
4 images of 128², all 49 patches of 32² each, width 16). GPU variants use SPEC sizes
(256², width 64, bf16 autocast, channels_last) and are skipped without a GPU. Each group
holds peer and ours; ``extra_info`` has images/s; the teardown prints the ratios.

``test_train_step_options_cpu``: the paper's width (64) on the CPU, our loss, fp32 NCHW
(today's default) against channels_last, bf16 autocast (``train --amp``: fp32 master
weights, loss kernels in fp32) and both (global: 4 images of 256²; local: 4 images of
128², 196 patches).
"""

from __future__ import annotations

import os

import pytest
import pytorch_msssim
import torch
from pytorch_msssim.ssim import _fspecial_gauss_1d, _ssim

from igd_fast.models import IGD, ModelConfig
from igd_fast.train import MStep, default_recon_fn, make_optimizers, model_inputs

torch.set_num_threads(int(os.environ.get("IGD_BENCH_THREADS", "2")))

SETUPS = {
    ("global", "cpu"): ({"kind": "global", "image_size": 192, "width": 16}, 4),
    ("local", "cpu"): ({"kind": "local", "image_size": 128, "width": 16}, 4),
    ("global", "cuda"): ({"kind": "global", "image_size": 256, "width": 64}, 32),
    ("local", "cuda"): ({"kind": "local", "image_size": 256, "width": 64}, 4),
}
RESULTS: dict[tuple[str, str], float] = {}  # (group, side) -> images/s


def peer_recon_fn(cfg: ModelConfig):
    """l_r (batch mean) with pytorch_msssim's MS-SSIM."""
    ms = cfg.msssim()
    k = (ms.k1, ms.k2)

    def msssim_per_image(x, y):
        if min(x.shape[-2:]) > (ms.win_size - 1) * 2**4:
            return pytorch_msssim.ms_ssim(
                x,
                y,
                data_range=ms.data_range,
                size_average=False,
                win_size=ms.win_size,
                win_sigma=ms.sigma,
                weights=list(ms.weights),
                K=k,
            )
        # pytorch_msssim.ms_ssim's loop, without its 5-scale size assert
        win = _fspecial_gauss_1d(ms.win_size, ms.sigma).repeat([x.shape[1], 1, 1, 1]).to(x)
        mcs = []
        for i in range(ms.scales):
            s, cs = _ssim(x, y, win=win, data_range=ms.data_range, size_average=False, K=k)
            if i < ms.scales - 1:
                mcs.append(torch.relu(cs))
                pad = [v % 2 for v in x.shape[2:]]
                x, y = (
                    torch.nn.functional.avg_pool2d(x, 2, padding=pad),
                    torch.nn.functional.avg_pool2d(y, 2, padding=pad),
                )
        vals = torch.stack([*mcs, torch.relu(s)], 0)
        w = torch.tensor(ms.weights, dtype=vals.dtype, device=vals.device).view(-1, 1, 1)
        return torch.prod(vals**w, 0).mean(1)

    def fn(x, x_hat):
        mae = (x - x_hat).abs().mean(dim=(1, 2, 3))
        per_image = cfg.rho * mae / ms.data_range + (1 - cfg.rho) * (1 - msssim_per_image(x, x_hat))
        return per_image.mean()

    return fn


def _setup(kind: str, device: str, setups: dict = SETUPS, cl: bool | None = None):
    kw, n = setups[(kind, device)]
    cfg = ModelConfig(**kw)
    torch.manual_seed(0)
    model = IGD(cfg).to(device)
    cl = device == "cuda" if cl is None else cl
    if cl:
        model = model.to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(n, 3, cfg.image_size, cfg.image_size, generator=g) * 4.7579 - 2.1179).to(device)
    x = model_inputs(images, cfg)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    return cfg, model, x, n


def _bench(benchmark, kind: str, device: str, side: str, rounds: int):
    cfg, model, x, n = _setup(kind, device)
    recon = peer_recon_fn(cfg) if side == "peer" else default_recon_fn(cfg)
    step = MStep(model, *make_optimizers(model), recon_fn=recon, amp_dtype=torch.bfloat16 if device == "cuda" else None)
    gen = torch.Generator().manual_seed(0)

    def run():
        out = step(x, gen)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    run()  # warm-up
    group = f"train_step_{kind}_{device}"
    benchmark.group = group
    benchmark.extra_info.update(side=side, images=n, model_inputs=x.shape[0], input_size=cfg.input_size)
    benchmark.pedantic(run, rounds=rounds, iterations=1)
    ips = n / benchmark.stats.stats.median
    benchmark.extra_info["images_per_s"] = ips
    RESULTS[(group, side)] = ips


@pytest.fixture(scope="module", autouse=True)
def _print_ratios():
    yield
    for group in sorted({g for g, _ in RESULTS}):
        peer, ours = RESULTS.get((group, "peer")), RESULTS.get((group, "ours"))
        if peer and ours:
            print(f"\n{group}: peer {peer:.2f} img/s, ours {ours:.2f} img/s -> {ours / peer:.2f}x")


@pytest.mark.parametrize("kind", ["global", "local"])
def test_peer_loss_matches_ours(kind):
    cfg, model, x, _ = _setup(kind, "cpu")
    x = x[:8]
    y = x + 0.3 * torch.randn_like(x)
    torch.testing.assert_close(default_recon_fn(cfg)(x, y), peer_recon_fn(cfg)(x, y), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("side", ["peer", "ours"])
@pytest.mark.parametrize("kind", ["global", "local"])
def test_train_step_cpu(benchmark, kind, side):
    _bench(benchmark, kind, "cpu", side, rounds=3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("side", ["peer", "ours"])
@pytest.mark.parametrize("kind", ["global", "local"])
def test_train_step_gpu(benchmark, kind, side):
    _bench(benchmark, kind, "cuda", side, rounds=10)


WIDE = {
    ("global", "cpu"): ({"kind": "global", "image_size": 256, "width": 64}, 4),
    ("local", "cpu"): ({"kind": "local", "image_size": 128, "width": 64}, 4),
}
# option -> (channels_last, bf16 autocast)
OPTIONS = {
    "fp32": (False, False),
    "channels_last": (True, False),
    "amp": (False, True),
    "amp+channels_last": (True, True),
}


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("kind", ["global", "local"])
def test_train_step_options_cpu(benchmark, kind, option):
    cl, amp = OPTIONS[option]
    cfg, model, x, n = _setup(kind, "cpu", WIDE, cl)
    step = MStep(model, *make_optimizers(model), amp_dtype=torch.bfloat16 if amp else None)
    gen = torch.Generator().manual_seed(0)
    step(x, gen)  # warm-up
    benchmark.group = f"train_step_{kind}_cpu width 64 options"
    benchmark.pedantic(lambda: step(x, gen), rounds=3, iterations=1)
    role = "peer" if option == "fp32" else "ours"
    benchmark.extra_info.update(role=role, entry=f"{kind} {option}", images_per_s=n / benchmark.stats.stats.median)
