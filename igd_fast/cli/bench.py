"""``igd-fast bench``: quick side-by-side timing of the fused MS-SSIM kernels.

For the full, recorded benchmark suite use ``pytest benchmarks`` (see docs/benchmarks.md); this is
the one-command check a user runs on their own machine or GPU.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

import igd_fast
from igd_fast import GLOBAL, LOCAL

from ._args import EXIT_USAGE, positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = (
        "examples:\n  igd-fast bench --config global --device cpu\n"
        "  igd-fast bench --config local --device cuda --dtype bfloat16 --json bench.json"
    )
    p.add_argument("--config", choices=["global", "local"], default="global",
                   help="MS-SSIM configuration (global: 11×11, 5 scales; local: 3×3, 4 scales)")
    p.add_argument("--shape", type=positive_int, nargs=4, metavar=("N", "C", "H", "W"), default=None,
                   help="input shape (default 16 3 256 256 for global, 3600 3 32 32 for local)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    p.add_argument("--backends", nargs="+", default=None, choices=("cpu", "cuda", "triton", "torch"),
                   help="backends to time (default: every available one, the torch reference included)")
    p.add_argument("--no-peer", action="store_true", help="skip pytorch_msssim even if installed")
    p.add_argument("--repeats", type=positive_int, default=5, help="timed calls per entry; the median is reported")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")


def _median_time(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()  # warm-up (Triton compiles, caches fill)
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def _entries(args, x, y, config) -> dict[str, dict[str, Callable[[], object]]]:
    """The timed calls: each backend's forward, forward+backward and map, and pytorch_msssim's."""
    avail = igd_fast.backends()
    names = args.backends or [b for b in ("cpu", "cuda", "triton", "torch") if avail[b]]
    if x.device.type == "cpu" and args.backends is None:
        names = [b for b in names if b != "cuda" and not (b == "triton" and not torch.cuda.is_available())]
    entries: dict[str, dict[str, Callable[[], object]]] = {}
    for b in names:
        def fwd(b=b):
            with torch.no_grad():
                return igd_fast.ms_ssim(x, y, config=config, backend=b)

        def fwd_bwd(b=b):
            yr = y.detach().requires_grad_(True)
            igd_fast.ms_ssim(x, yr, config=config, backend=b).backward()

        def pixel_map(b=b):
            with torch.no_grad():
                return igd_fast.ms_ssim_map(x, y, config=config, backend=b)

        entries[b] = {"forward": fwd, "forward+backward": fwd_bwd, "map": pixel_map}
    if not args.no_peer and config is GLOBAL:
        entries.update(_peer(x, y, config))
    return entries


def _peer(x, y, config) -> dict[str, dict[str, Callable[[], object]]]:
    try:
        import pytorch_msssim
    except ImportError:
        return {}
    kw = dict(data_range=config.data_range, win_size=config.win_size, win_sigma=config.sigma,
              weights=list(config.weights), K=(config.k1, config.k2))

    def pm_fwd():
        with torch.no_grad():
            return pytorch_msssim.ms_ssim(x, y, **kw)

    def pm_fwd_bwd():
        yr = y.detach().requires_grad_(True)
        pytorch_msssim.ms_ssim(x, yr, **kw).backward()

    return {"pytorch_msssim": {"forward": pm_fwd, "forward+backward": pm_fwd_bwd}}


def _check(args: argparse.Namespace, config, shape) -> str | None:
    """Why these flags cannot be benchmarked (named), or None: checked before any allocation."""
    from .._dist import DeviceError, resolve_device
    from ..limits import max_pixels

    try:
        resolve_device(args.device)
    except DeviceError as e:
        return f"--device: {e}"
    n, c, h, w = shape
    if min(h, w) < config.min_size:
        return (f"--shape {n} {c} {h} {w}: H and W must be at least {config.min_size} for the {args.config} config "
                f"({config.scales} scales, {config.win_size}×{config.win_size} window)")
    if n * c * h * w > max_pixels() * 3:
        return (f"--shape {n} {c} {h} {w}: {n * c * h * w:,} values per input, over the limit of {max_pixels() * 3:,} "
                "(3 × IGD_FAST_MAX_PIXELS; raise that to time larger inputs)")
    unavailable = [b for b in args.backends or () if not igd_fast.backends()[b]]
    if unavailable:
        return f"--backends {' '.join(unavailable)}: not available in this install"
    return None


def run(args: argparse.Namespace) -> int:
    import sys

    config = GLOBAL if args.config == "global" else LOCAL
    shape = args.shape or ((16, 3, 256, 256) if args.config == "global" else (3600, 3, 32, 32))
    why = _check(args, config, shape)
    if why is not None:
        print(f"igd-fast bench: error: {why}", file=sys.stderr)
        return EXIT_USAGE
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g).to(device, dtype)
    y = (x.float() + 0.3 * torch.randn(*shape, generator=g).to(device)).to(dtype)
    entries = _entries(args, x, y, config)
    results = []
    print(f"MS-SSIM {args.config} config, {tuple(shape)} {args.dtype} on {device}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    for name, ops in entries.items():
        for what, fn in ops.items():
            results.append({"entry": name, "op": what, "median_s": _median_time(fn, args.repeats, device)})
    _print_table(results)
    if args.json:
        from ..outputs import write_json

        write_json(args.json, {"config": args.config, "shape": list(shape), "device": str(device),
                               "dtype": args.dtype, "threads": torch.get_num_threads(), "results": results})
        print(f"wrote {args.json}")
    return 0


def _print_table(results: list[dict]) -> None:
    fastest = {}
    for r in results:
        if r["entry"] != "pytorch_msssim" and r["entry"] != "torch":
            fastest[r["op"]] = min(fastest.get(r["op"], float("inf")), r["median_s"])
    print(f"{'entry':<16}{'op':<18}{'median':>12}{'× slower than best kernel':>28}")
    for r in results:
        best = fastest.get(r["op"])
        ratio = f"{r['median_s'] / best:.1f}×" if best else "-"
        print(f"{r['entry']:<16}{r['op']:<18}{r['median_s'] * 1e3:>10.2f}ms{ratio:>28}")
