"""Inference-only fp32 network paths against the Scorer's eager one, in one process (issue 16).

    python benchmarks/fp32_paths.py [--width 64] [--images 4] [--reps 5] [--paths ...]

The two width-64 models at 256² as ``test_bench_scoring.py`` builds them (random weights,
BatchNorm folded, channels_last, eval, ``inference_mode``): the global model on ``--images``
images and the local model on their 225 patches each. Paths (``--paths``, default all):

  eager        the Scorer's fp32 path (the reference of the others)
  fused        ``igd_fast.models.polyphase.fuse_upsampling``: nearest-2x + 3x3 conv pairs
               as one 2x2 polyphase conv (16/36 of those multiply-adds) where the map going
               in is >= 8² (the default rule), and the head
  fused-all    the same at every size (min_size=1)
  jit          ``torch.jit.trace`` + ``torch.jit.freeze`` + ``torch.jit.optimize_for_inference``
               (oneDNN prepacked weights, conv+relu/add fusions)
  jit-fused    the same on the fused model
  mkldnn       ``torch.utils.mkldnn.to_mkldnn`` (prepacked oneDNN weights; the dense
               channels_last activations are converted at every conv)
  chunkN       eager with the local model's patches in chunks of N

``--scorer``: instead, ``Scorer.score_batch`` end to end with and without the polyphase
decoder (``fuse_upsample``), scores and maps compared.

Each round times every path once, in turn (drift hits all alike); medians over ``--reps``
rounds after two warm-ups. Each path's outputs are compared with eager's (max |difference|
relative to the output's max |value|). GFLOP/s are over the *counted* FLOPs of the eager
model (FlopCounterMode convention, 2 per multiply-add, padding taps included).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings

import torch
from _netargs import add_network_args
from layer_profile import build, inputs  # benchmarks/ is on sys.path when run as a script
from torch.utils.flop_counter import FlopCounterMode

from igd_fast.models.polyphase import fuse_upsampling


def counted_gflop(model, x) -> float:
    with FlopCounterMode(display=False) as fc, torch.inference_mode():
        model(x)
    return fc.get_total_flops() / 1e9


def jit_path(model, x):
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tr = torch.jit.trace(model, x[:2], check_trace=False)
        return torch.jit.optimize_for_inference(torch.jit.freeze(tr.eval()))


def mkldnn_path(model):
    import torch.utils.mkldnn as mk

    # to_mkldnn replaces the children of the module it is given: convert a copy
    return mk.to_mkldnn(copy.deepcopy(model))


def make_paths(kind: str, width: int, names: list[str]) -> dict:
    m = build(kind, width)
    fns = {}
    for name in names:
        if name == "eager":
            fns[name] = (m, None)
        elif name == "fused":
            fns[name] = (fuse_upsampling(m), None)
        elif name == "fused-all":
            fns[name] = (fuse_upsampling(m, min_size=1), None)
        elif name == "jit":
            fns[name] = ("jit", m)
        elif name == "jit-fused":
            fns[name] = ("jit", fuse_upsampling(m))
        elif name == "mkldnn":
            fns[name] = (mkldnn_path(m), None)
        elif name.startswith("chunk"):
            fns[name] = (m, int(name[5:]))
    return m, fns


def scorer_end_to_end(a) -> None:
    """Scorer.score_batch (global + local, maps) with and without the polyphase decoder,
    interleaved rounds; scores and maps compared."""
    import tempfile
    from pathlib import Path

    from igd_fast.checkpoint import save_checkpoint
    from igd_fast.models import IGD, ModelConfig
    from igd_fast.score import Scorer

    torch.manual_seed(0)
    d = Path(tempfile.mkdtemp(prefix="fp32_paths_"))
    for kind in ("global", "local"):
        m = IGD(ModelConfig(kind=kind, image_size=256, width=a.width))
        m.descriptor.set(torch.randn(m.config.latent) * 0.1, 4.0)
        save_checkpoint(d / f"{kind}.pt", m)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(a.images, 3, 256, 256, generator=g) * 4.7579 - 2.1179
    kw = dict(device="cpu", score_norm="sum", map_norm="sum")
    scorers = {"Scorer fuse_upsample=False": Scorer(d, fuse_upsample=False, **kw),
               "Scorer default (fuse_upsample on)": Scorer(d, **kw)}  # fmt: skip
    outs = {k: (s.score_batch(x), s.score_batch(x))[0] for k, s in scorers.items()}
    ts = {k: [] for k in scorers}
    for _ in range(a.reps):
        for k, s in scorers.items():
            t = time.perf_counter()
            s.score_batch(x)
            ts[k].append(time.perf_counter() - t)
    ref = outs["Scorer fuse_upsample=False"]
    base = statistics.median(ts["Scorer fuse_upsample=False"])
    print(f"\n## Scorer.score_batch, {a.images} images, 256², global + local, width {a.width}, maps on\n")
    print("| path | median ms (min-max) | images/s | vs no-polyphase | max rel. diff of scores / maps |")
    print("|---|---|---|---|---|")
    for k, t in ts.items():
        med, o = statistics.median(t), outs[k]
        ds = float(((o.score.double() - ref.score.double()).abs() / ref.score.double().abs()).max())
        dm = float((o.maps - ref.maps).abs().max() / ref.maps.abs().max())
        print(f"| {k} | {med * 1e3:.0f} ({min(t) * 1e3:.0f}-{max(t) * 1e3:.0f}) | {a.images / med:.2f} | "
              f"{base / med:.2f}x | {ds:.1e} / {dm:.1e} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_network_args(p)
    p.add_argument("--paths", nargs="+", default=["eager", "fused", "jit", "jit-fused", "mkldnn"])
    p.add_argument("--scorer", action="store_true", help="only the end-to-end Scorer comparison")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.scorer:
        return scorer_end_to_end(a)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {a.images} images of 256², width {a.width}")
    for kind in a.kinds:
        m, specs = make_paths(kind, a.width, a.paths)
        x = inputs(m, a.images)
        gflop = counted_gflop(m, x)
        runs = {}
        for name, (mod, arg) in specs.items():
            if mod == "jit":
                try:
                    mod = jit_path(arg, x)
                except Exception as e:  # a path that does not build is reported, not fatal
                    print(f"{kind} {name}: failed to build: {type(e).__name__}: {str(e)[:200]}")
                    continue
                arg = None
            if kind == "global" or not isinstance(arg, int):
                runs[name] = lambda mod=mod, x=x: mod(x)
            else:
                runs[name] = lambda mod=mod, n=arg, x=x: [mod(c) for c in x.split(n)]
        with torch.inference_mode():
            ref = m(x)[1]
            ok = {}
            for name, fn in runs.items():
                try:
                    out = fn()
                    y = out[1] if isinstance(out, tuple) else torch.cat([o[1] for o in out])
                    y = y.to_dense() if y.is_mkldnn else y
                    ok[name] = float((y - ref).abs().max() / ref.abs().max())
                    fn()
                except Exception as e:
                    print(f"{kind} {name}: failed to run: {type(e).__name__}: {str(e)[:200]}")
            ts = {name: [] for name in ok}
            for _ in range(a.reps):
                for name in ok:
                    t = time.perf_counter()
                    runs[name]()
                    ts[name].append(time.perf_counter() - t)
        base = statistics.median(ts["eager"]) if "eager" in ts else None
        print(f"\n## {kind}: input {tuple(x.shape)}, {gflop:.1f} GFLOP counted (eager model)\n")
        print("| path | median ms (min-max) | vs eager | counted GFLOP/s | % of peak | max rel. diff of x_hat |")
        print("|---|---|---|---|---|---|")
        for name, t in ts.items():
            med = statistics.median(t)
            sp = f"{base / med:.2f}x" if base else "—"
            print(f"| {name} | {med * 1e3:.1f} ({min(t) * 1e3:.1f}-{max(t) * 1e3:.1f}) | {sp} | {gflop / med:.0f} | "
                  f"{100 * gflop / med / a.peak:.0f} | {ok[name]:.1e} |")


if __name__ == "__main__":
    main()
