"""Per-layer time and achieved GFLOP/s of the fp32 scoring networks (issue 16).

    python benchmarks/layer_profile.py [--width 64] [--images 4] [--reps 5] [--peak 460]
                                       [--kinds global local] [--chunk N] [--top 12]

The two models as ``test_bench_scoring.py`` and the Scorer run them (ModelConfig defaults,
256², random weights, BatchNorm folded, channels_last, eval, ``inference_mode``): the global
model on ``--images`` images, the local model on their 225 patches each (in chunks of
``--chunk`` patches, default all at once). A forward pre-hook and hook on every leaf module
time it (perf_counter; the CPU runs synchronously); FLOPs are counted per module as
2 per multiply-add (Conv2d, Linear), the convention of ``FlopCounterMode``. Medians over
``--reps`` passes after two warm-ups (oneDNN builds its primitives on the first call of a
shape). Time outside the leaf modules (the residual adds, views) is reported as "other".
Hook overhead is a few microseconds per module against milliseconds per conv.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time

import torch
import torch.nn.functional as F
from _netargs import add_network_args
from torch import nn

from igd_fast.models import IGD, ModelConfig
from igd_fast.models.fold import fold_batchnorm
from igd_fast.models.polyphase import UpsampleConv2d, fuse_upsampling


def build(kind: str, width: int, size: int = 256) -> IGD:
    torch.manual_seed(0)
    m = IGD(ModelConfig(kind=kind, image_size=size, width=width))
    m.descriptor.set(torch.randn(m.config.latent) * 0.1, 4.0)
    return fold_batchnorm(m).eval().to(memory_format=torch.channels_last)


def inputs(model: IGD, images: int, size: int = 256) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(images, 3, size, size, generator=g) * 4.7579 - 2.1179
    if model.config.kind == "local":
        k, st = model.config.patch_size, model.config.patch_stride
        x = F.unfold(x, k, stride=st).transpose(1, 2).reshape(-1, 3, k, k)
    return x.contiguous(memory_format=torch.channels_last)


def module_flops(m: nn.Module, out: torch.Tensor) -> float:
    if isinstance(m, nn.Conv2d):
        k = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        return 2.0 * out.numel() * k
    if isinstance(m, nn.Linear):
        return 2.0 * out.numel() * m.in_features
    if isinstance(m, UpsampleConv2d):  # the multiply-adds it does: a 2x2 conv to 4x the channels, (H+1)² pixels
        n, c, h2, w2 = out.shape
        return 2.0 * n * 4 * c * (h2 // 2 + 1) * (w2 // 2 + 1) * m.weight.shape[1] * 4
    return 0.0


class LayerTimer:
    """Hooks on every leaf module: per-call wall time, FLOPs and shapes, keyed by name."""

    def __init__(self, model: nn.Module) -> None:
        self.times: dict[str, list[float]] = collections.defaultdict(list)
        self.info: dict[str, tuple[str, float, str]] = {}
        self._t0: dict[str, float] = {}
        self.handles = []
        for name, mod in model.named_modules():
            if len(list(mod.children())) == 0 and not isinstance(mod, nn.Identity):
                self.handles.append(mod.register_forward_pre_hook(self._pre(name)))
                self.handles.append(mod.register_forward_hook(self._post(name)))
        self.recording = False

    def _pre(self, name: str):
        def hook(mod, args):
            self._t0[name] = time.perf_counter()
        return hook

    def _post(self, name: str):
        def hook(mod, args, out):
            dt = time.perf_counter() - self._t0[name]
            if self.recording:
                self.times[name].append(dt)
                if name not in self.info:
                    x = args[0]
                    what = type(mod).__name__
                    if isinstance(mod, UpsampleConv2d):
                        what = "up2x+conv3x3 as 2x2 polyphase"
                    elif isinstance(mod, nn.Conv2d):
                        what = f"conv{mod.kernel_size[0]}x{mod.kernel_size[1]}/s{mod.stride[0]}"
                    shape = f"{x.shape[1]}x{x.shape[-1]}²->{out.shape[1]}x{out.shape[-1]}²" if x.dim() == 4 else \
                        f"{x.shape[-1]}->{out.shape[-1]}"
                    self.info[name] = (what, module_flops(mod, out), shape)
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def profile(model: IGD, x: torch.Tensor, reps: int, chunk: int | None) -> tuple[LayerTimer, list[float]]:
    timer = LayerTimer(model)
    parts = x.split(chunk) if chunk else (x,)

    def run():
        for c in parts:
            model(c)

    totals = []
    with torch.inference_mode():
        run()
        run()
        timer.recording = True
        for _ in range(reps):
            t = time.perf_counter()
            run()
            totals.append(time.perf_counter() - t)
    timer.remove()
    # a module called once per chunk: sum the chunks of one pass, median over passes
    n = len(parts)
    timer.times = {k: [sum(v[i * n:(i + 1) * n]) for i in range(reps)] for k, v in timer.times.items()}
    return timer, totals


def report(kind: str, model: IGD, x: torch.Tensor, args) -> None:
    timer, totals = profile(model, x, args.reps, args.chunk)
    total = statistics.median(totals)
    rows = []
    for name, ts in timer.times.items():
        what, fl, shape = timer.info[name]
        n_calls = len(x.split(args.chunk)) if args.chunk else 1
        rows.append((name, what, shape, fl * n_calls, statistics.median(ts)))
    conv = [r for r in rows if r[3] > 0]
    flops = sum(r[3] for r in conv)
    t_conv = sum(r[4] for r in conv)
    t_leaf = sum(r[4] for r in rows)
    peak = args.peak
    print(f"\n## {kind} model, width {model.config.width}, input {tuple(x.shape)}"
          f"{f', chunks of {args.chunk}' if args.chunk else ''}: median {total * 1e3:.1f} ms per pass, "
          f"{flops / 1e9:.2f} GFLOP, {flops / total / 1e9:.0f} GFLOP/s overall "
          f"({100 * flops / total / 1e9 / peak:.0f} % of {peak:.0f})")
    print(f"conv+linear {t_conv * 1e3:.1f} ms ({100 * t_conv / total:.0f} %, {flops / t_conv / 1e9:.0f} GFLOP/s); "
          f"other leaf modules (relu, upsample, maxpool) {(t_leaf - t_conv) * 1e3:.1f} ms; "
          f"outside modules (residual adds, views) {(total - t_leaf) * 1e3:.1f} ms")
    # by spatial size of the output: where the small maps are
    by_size: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
    for _, _what, shape, fl, t in conv:
        key = shape.split("->")[1].split("x")[-1] if "²" in shape else "linear"
        by_size[key][0] += fl
        by_size[key][1] += t
    print("\n| output map | GFLOP | ms | % of model time | GFLOP/s | % of peak |\n|---|---|---|---|---|---|")
    for key, (fl, t) in sorted(by_size.items(), key=lambda kv: -kv[1][0]):
        print(f"| {key} | {fl / 1e9:.2f} | {t * 1e3:.1f} | {100 * t / total:.0f} | {fl / t / 1e9:.0f} | "
              f"{100 * fl / t / 1e9 / peak:.0f} |")
    print("\n| layer | op | shape | GFLOP | ms | GFLOP/s | % of peak |\n|---|---|---|---|---|---|---|")
    for name, what, shape, fl, t in sorted(rows, key=lambda r: -r[4])[: args.top]:
        rate = f"{fl / t / 1e9:.0f}" if fl else "—"
        pct = f"{100 * fl / t / 1e9 / peak:.0f}" if fl else "—"
        print(f"| {name} | {what} | {shape} | {fl / 1e9:.3f} | {t * 1e3:.2f} | {rate} | {pct} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_network_args(p)
    p.add_argument("--chunk", type=int, default=None, help="local patches per forward pass (default: all)")
    p.add_argument("--fused", action="store_true", help="profile fuse_upsampling(model) (polyphase decoder)")
    p.add_argument("--top", type=int, default=12, help="slowest layers listed")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for kind in args.kinds:
        m = build(kind, args.width)
        if args.fused:
            m = fuse_upsampling(m)
        report(kind, m, inputs(m, args.images), args)


if __name__ == "__main__":
    main()
