"""End-to-end batch scoring (global + local, 256²): igd_fast.Scorer vs the same pipeline
built the way the published code does it, on pytorch_msssim + unfold/fold.

Both sides run the same two model objects (ModelConfig defaults, latent 128, at width 64
= ResNet-18 and at width 16; random weights with a set descriptor: timing does not depend
on what was learnt; channels_last, as the Scorer loads them) on the same batch, and a
third entry times the two networks alone: the floor neither pipeline can go below.
Both produce the same outputs: image scores s_G + s_L and the
per-pixel map (global l_r map + local l_r patch maps folded with the mean). The baseline
is checked to agree numerically with ours before it is timed.

Baseline ("published-code style"):
  * global l_r: ``pytorch_msssim.ms_ssim`` (batched: stronger than the published
    one-image-at-a-time validation loop) + a second pass for the per-pixel map, built
    from ``pytorch_msssim.gaussian_filter`` per scale (the library has no map output);
  * local: patches with ``F.unfold``; pytorch_msssim refuses the local configuration
    (32² with 4 scales), so its ``gaussian_filter`` building block computes the
    per-scale SSIM/cs maps, whose means give the score; maps folded with ``F.fold``
    (sum) divided by the fold of ones (mean of overlaps);
  * s_L = max over patches.

Run (the malloc settings matter: see below):
    MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=4294967296 \
    pytest benchmarks/test_bench_scoring.py --benchmark-only --benchmark-group-by=group \
        --benchmark-json=scoring.json && python benchmarks/report.py scoring.json
images/s = batch / median, in ``extra_info`` and printed. IGD_BENCH_BATCH sets the CPU
batch (default 4), IGD_BENCH_THREADS the torch threads (default 2).

Our network paths side by side (same group): the Scorer's default (fp32, BatchNorm folded,
upsample + conv as polyphase convs), the same without the polyphase rewrite,
fp32 unfolded (``fold_bn=False``, the path before folding; target 2x), bf16 autocast
networks (``precision="bf16"``, no guard: random weights) and the networks alone in fp32
and bf16 (peak RSS of each path: benchmarks/scoring_rss.py, one process per path). The
network FLOPs per image are counted with
``FlopCounterMode`` and the achieved network GFLOP/s recorded (IGD_BENCH_FP32_PEAK, in
GFLOP/s, adds the fraction of the CPU's fp32 peak; benchmarks/peak_fma.c measures it).
``test_bench_patch_chunk`` times the local model's patch chunk sizes (batch 16 images);
``test_bench_compile_folder`` scores a folder of IGD_BENCH_FOLDER (default 96) images with
and without ``compile=True``, compile time included.

Without those two variables glibc serves every large tensor with a fresh mmap and
returns it on free, and in the development VMs the page faults dominated: the same
forward pass varied 4-30× depending on what ran before it in the process. With them,
medians repeat to a few per cent.
"""

from __future__ import annotations

import importlib
import os
import time

import pytest
import torch
import torch.nn.functional as F

pytorch_msssim = pytest.importorskip("pytorch_msssim")
# the submodule, not the ssim() function the package re-exports under the same name
_pm_ssim = importlib.import_module("pytorch_msssim.ssim")

from igd_fast.checkpoint import save_checkpoint  # noqa: E402
from igd_fast.config import MSSSIMConfig  # noqa: E402
from igd_fast.models import IGD, ModelConfig  # noqa: E402
from igd_fast.score import Scorer  # noqa: E402
from igd_fast.score.precision import bf16_support  # noqa: E402

torch.set_num_threads(int(os.environ.get("IGD_BENCH_THREADS", "2")))

SIZE = 256
BATCH = {"cpu": int(os.environ.get("IGD_BENCH_BATCH", "4")), "cuda": 32}


# ---------------------------------------------------------------- the baseline pipeline


def _ssim_maps(x, y, win, c1, c2):
    g = _pm_ssim.gaussian_filter
    mu1, mu2 = g(x, win), g(y, win)
    s11 = g(x * x, win) - mu1 * mu1
    s22 = g(y * y, win) - mu2 * mu2
    s12 = g(x * y, win) - mu1 * mu2
    cs = (2 * s12 + c2) / (s11 + s22 + c2)
    return ((2 * mu1 * mu2 + c1) / (mu1 * mu1 + mu2 * mu2 + c1)) * cs, cs


def baseline_ms_ssim(x, y, cfg: MSSSIMConfig, want_value: bool = True):
    """(N MS-SSIM values or None, N×1×H×W per-pixel map), pytorch_msssim-style."""
    n, c, h, w = x.shape
    win = _pm_ssim._fspecial_gauss_1d(cfg.win_size, cfg.sigma).repeat([c, 1, 1, 1]).to(x)
    vals, maps = [], []
    last = cfg.scales - 1
    for j in range(cfg.scales):
        s_map, cs_map = _ssim_maps(x, y, win, cfg.c1, cfg.c2)
        m = s_map if j == last else cs_map
        maps.append(m)
        vals.append(torch.relu(m.flatten(2).mean(-1)))
        if j < last:
            pad = [s % 2 for s in x.shape[2:]]
            x, y = F.avg_pool2d(x, 2, padding=pad), F.avg_pool2d(y, 2, padding=pad)
    value = torch.stack(vals).pow(x.new_tensor(cfg.weights).view(-1, 1, 1)).prod(0).mean(1)
    full = torch.ones(n, c, h, w, dtype=x.dtype, device=x.device)
    r = cfg.win_size // 2
    for m, wt in zip(maps, cfg.weights, strict=True):
        up = F.interpolate(F.pad(m, (r, r, r, r), mode="replicate"), size=(h, w), mode="bilinear", align_corners=False)
        full = full * torch.relu(up).pow(wt)
    return (value if want_value else None), full.mean(1, keepdim=True)


@torch.inference_mode()
def baseline_score(x, g: IGD, loc: IGD):
    gc, lc = g.config, loc.config
    z, xh = g(x)
    ms = pytorch_msssim.ms_ssim(
        x, xh, data_range=gc.data_range, size_average=False, win_size=gc.win_size, weights=list(gc.weights)
    )
    mae = (x - xh).abs()
    s_g = gc.rho * mae.mean((1, 2, 3)) / gc.data_range + (1 - gc.rho) * (1 - ms) + g.descriptor.l_h(z)
    _, ms_map = baseline_ms_ssim(x, xh, gc.msssim(), want_value=False)
    map_g = gc.rho * mae.mean(1, keepdim=True) / gc.data_range + (1 - gc.rho) * (1 - ms_map)

    n, c, h, w = x.shape
    k, st = lc.patch_size, lc.patch_stride
    cols = F.unfold(x, k, stride=st)  # N×(C·k·k)×L
    nl = cols.shape[-1]
    patches = cols.transpose(1, 2).reshape(n * nl, c, k, k)
    zp, ph = loc(patches)
    vals, pmap = baseline_ms_ssim(patches, ph, lc.msssim())
    pmae = (patches - ph).abs()
    s_p = lc.rho * pmae.mean((1, 2, 3)) / lc.data_range + (1 - lc.rho) * (1 - vals) + loc.descriptor.l_h(zp)
    s_l = s_p.view(n, nl).amax(1)
    pm = lc.rho * pmae.mean(1, keepdim=True) / lc.data_range + (1 - lc.rho) * (1 - pmap)
    pcols = pm.reshape(n, nl, k * k).transpose(1, 2)
    summed = F.fold(pcols, (h, w), k, stride=st)
    cover = F.fold(torch.ones_like(pcols), (h, w), k, stride=st)
    return s_g + s_l, map_g + summed / cover


# ---------------------------------------------------------------- fixtures


# 64 = the paper's ResNet-18 width; 16 = a light model, where the networks no longer hide
# the scoring pipeline's own cost
WIDTHS = [64, 16]


@pytest.fixture(scope="module", params=WIDTHS, ids=lambda w: f"width{w}")
def model_dir(request, tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp(f"bench_models_w{request.param}")
    for kind in ("global", "local"):
        m = IGD(ModelConfig(kind=kind, image_size=SIZE, width=request.param))
        m.descriptor.set(torch.randn(m.config.latent) * 0.1, 4.0)
        save_checkpoint(d / f"{kind}.pt", m)
    return d


def _group(scorer, device):
    return f"end-to-end scoring 256² global+local, width {scorer.global_model.config.width} ({device})"


def _device(name):
    if name == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return torch.device(name)


def _batch(dev):
    g = torch.Generator().manual_seed(1)
    return (torch.rand(BATCH[dev.type], 3, SIZE, SIZE, generator=g) * 4.7579 - 2.1179).to(dev)


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _report(benchmark, n, label):
    med = benchmark.stats.stats.median
    benchmark.extra_info["images_per_s"] = n / med
    print(f"\n{label}: {n / med:.2f} images/s (median {med * 1e3:.1f} ms per batch of {n})")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_baseline_agrees_with_ours(model_dir, device):
    dev = _device(device)
    scorer = Scorer(model_dir, device=dev)
    x = _batch(dev)[:2]
    ours = scorer.score_batch(x)
    s, m = baseline_score(x, scorer.global_model, scorer.local_model)
    torch.testing.assert_close(ours.score, s, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours.maps, m, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_bench_scoring_igd_fast(benchmark, model_dir, device):
    dev = _device(device)
    scorer = Scorer(model_dir, device=dev)
    benchmark.group = _group(scorer, device)
    x = _batch(dev)

    def run():
        out = scorer.score_batch(x)
        _sync(dev)
        return out

    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(role="ours", entry="igd_fast Scorer")
    _report(benchmark, x.shape[0], f"igd_fast ({device})")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_bench_scoring_pytorch_msssim_unfold_fold(benchmark, model_dir, device):
    dev = _device(device)
    scorer = Scorer(model_dir, device=dev)  # only to load the same two models
    benchmark.group = _group(scorer, device)
    g, loc = scorer.global_model, scorer.local_model
    x = _batch(dev)

    def run():
        out = baseline_score(x, g, loc)
        _sync(dev)
        return out

    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(role="peer", entry="pytorch_msssim + unfold/fold", target=3.0)
    _report(benchmark, x.shape[0], f"pytorch_msssim + unfold/fold ({device})")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_bench_scoring_models_only(benchmark, model_dir, device):
    """The floor both pipelines share: the two networks' forward passes alone."""
    dev = _device(device)
    scorer = Scorer(model_dir, device=dev)
    benchmark.group = _group(scorer, device)
    g, loc = scorer.global_model, scorer.local_model
    x = _batch(dev)
    k, st = loc.config.patch_size, loc.config.patch_stride
    patches = F.unfold(x, k, stride=st).transpose(1, 2).reshape(-1, 3, k, k)

    @torch.inference_mode()
    def run():
        g(x)
        loc(patches)
        _sync(dev)

    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    # no target: a ratio below 1 here says how much of the time the networks take
    benchmark.extra_info.update(role="floor", entry="the two networks alone (shared floor)")
    _report(benchmark, x.shape[0], f"models only ({device})")


# ---------------------------------------------------------------- network paths, memory, FLOPs


def network_gflop_per_image(scorer) -> float:
    """Counted FLOPs (2 per multiply-add) of both networks for one 256² image: the global
    model on the image, the local model on its patches."""
    from torch.utils.flop_counter import FlopCounterMode

    g, loc = scorer.global_model, scorer.local_model
    k, st = loc.config.patch_size, loc.config.patch_stride
    x = _batch(torch.device("cpu"))[:1]
    patches = F.unfold(x, k, stride=st).transpose(1, 2).reshape(-1, 3, k, k)
    with FlopCounterMode(display=False) as fc, torch.inference_mode():
        g(x)
        loc(patches)
    return fc.get_total_flops() / 1e9


def _flop_info(benchmark, gflop: float, n: int) -> None:
    rate = gflop * n / benchmark.stats.stats.median
    benchmark.extra_info.update(network_gflop_per_image=gflop, network_gflop_per_s=rate)
    peak = os.environ.get("IGD_BENCH_FP32_PEAK")
    if peak:
        benchmark.extra_info["fraction_of_fp32_peak"] = rate / float(peak)
    print(f"  {gflop:.1f} GFLOP/image counted: {rate:.0f} network GFLOP/s over this entry's time")


def _needs_bf16(kw: dict) -> None:
    if kw.get("precision") == "bf16" and bf16_support(torch.device("cpu")) is not None:
        pytest.skip("no native bf16 on this CPU")


# entry -> (role, Scorer keyword arguments, target speed-up of "ours" over it)
PATHS = {
    "igd_fast Scorer fp32 unfolded (fold_bn=False)": ("peer", {"fold_bn": False}, 2.0),
    # the default path before the polyphase decoder (igd_fast.models.polyphase)
    "igd_fast Scorer fp32 folded, no polyphase (fuse_upsample=False)": ("peer", {"fuse_upsample": False}, None),
    "igd_fast Scorer bf16 autocast networks": ("ours", {"precision": "bf16"}, None),
}


@pytest.mark.parametrize("entry", list(PATHS))
def test_bench_scoring_paths(benchmark, model_dir, entry):
    role, kw, target = PATHS[entry]
    _needs_bf16(kw)
    dev = torch.device("cpu")
    scorer = Scorer(model_dir, device=dev, **kw)
    benchmark.group = _group(scorer, "cpu")
    x = _batch(dev)
    benchmark.pedantic(lambda: scorer.score_batch(x), rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(role=role, entry=entry)
    if target is not None:
        benchmark.extra_info["target"] = target
    _report(benchmark, x.shape[0], entry)
    _flop_info(benchmark, network_gflop_per_image(scorer), x.shape[0])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_bench_networks_alone(benchmark, model_dir, precision):
    """Both networks (BatchNorm folded, as the Scorer runs them) alone: achieved GFLOP/s."""
    kw = {"precision": precision}
    _needs_bf16(kw)
    scorer = Scorer(model_dir, device="cpu", **kw)
    benchmark.group = _group(scorer, "cpu")
    g, loc = scorer.global_model, scorer.local_model
    x = _batch(torch.device("cpu"))
    k, st = loc.config.patch_size, loc.config.patch_stride
    patches = F.unfold(x, k, stride=st).transpose(1, 2).reshape(-1, 3, k, k)
    fmt = torch.channels_last
    x, patches = x.contiguous(memory_format=fmt), patches.contiguous(memory_format=fmt)

    @torch.inference_mode()
    def run():
        g(x)
        loc(patches)

    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    entry = f"the two networks alone, folded, {precision}"
    benchmark.extra_info.update(role="floor", entry=entry)
    _report(benchmark, x.shape[0], entry)
    _flop_info(benchmark, network_gflop_per_image(scorer), x.shape[0])


CHUNK_BATCH = 16  # the Scorer's default batch: 3,600 patches
CHUNKS = [225, 450, 900, 1800, 4096]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("chunk", CHUNKS)
def test_bench_patch_chunk(benchmark, model_dir, chunk, precision):
    _needs_bf16({"precision": precision})
    scorer = Scorer(model_dir, device="cpu", batch_size=CHUNK_BATCH, patch_chunk=chunk, precision=precision)
    benchmark.group = f"local patch chunk, {CHUNK_BATCH} images, width {scorer.local_model.config.width}, {precision}"
    x = torch.cat([_batch(torch.device("cpu"))] * (CHUNK_BATCH // BATCH["cpu"] + 1))[:CHUNK_BATCH]
    benchmark.pedantic(lambda: scorer.score_batch(x), rounds=3, iterations=1, warmup_rounds=1)
    default = chunk == scorer.patch_chunk == CHUNKS[-1]
    benchmark.extra_info.update(role="ours" if default else "peer", entry=f"patch_chunk {chunk}")
    _report(benchmark, CHUNK_BATCH, f"patch_chunk {chunk} ({precision})")


FOLDER = int(os.environ.get("IGD_BENCH_FOLDER", "96"))


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    from PIL import Image

    d = tmp_path_factory.mktemp("bench_folder")
    g = torch.Generator().manual_seed(3)
    for i in range(FOLDER):
        a = (torch.rand(SIZE, SIZE, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(a).save(d / f"{i:03d}.png")
    return sorted(d.glob("*.png"))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_bench_compile_folder(benchmark, model_dir, image_folder, compiled, precision):
    """A typical folder end to end (reading in the main process), compile time counted."""
    _needs_bf16({"precision": precision})
    benchmark.group = f"folder of {FOLDER} images, 256² global+local, Scorer compile, {precision}"
    times = {}

    def run():
        t0 = time.perf_counter()
        scorer = Scorer(model_dir, device="cpu", compile=compiled, precision=precision)
        it = scorer.score_paths(image_folder, want_maps=True)
        next(it)
        times["first_batch_s"] = time.perf_counter() - t0
        n = 1 + sum(1 for _ in it)
        times["images"] = n
        times["steady_images_per_s"] = (n - scorer.batch_size) / (time.perf_counter() - t0 - times["first_batch_s"])

    benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)
    entry = "Scorer(compile=True)" if compiled else "Scorer eager"
    benchmark.extra_info.update(times, role="ours" if compiled else "peer", entry=entry)
    _report(benchmark, FOLDER, entry)
    print(f"  first batch (compile included) {times['first_batch_s']:.1f} s, then "
          f"{times['steady_images_per_s']:.2f} images/s")  # fmt: skip
