"""Command-line flags the network benchmarks (fp32_paths.py, layer_profile.py) share."""

from __future__ import annotations

import argparse


def add_network_args(p: argparse.ArgumentParser) -> None:
    """--width, --images, --reps, --threads, --peak, --kinds: what is measured and against what peak."""
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--peak", type=float, default=460.0, help="fp32 peak GFLOP/s (benchmarks/peak_fma.c)")
    p.add_argument("--kinds", nargs="+", default=["global", "local"])
