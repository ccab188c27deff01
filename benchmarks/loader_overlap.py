"""End-to-end folder scoring (reading included) for DataLoader workers x torch threads (issue 16).

    python benchmarks/loader_overlap.py "/work/shared/data/textures_dev/*/test/*/*.png" \
        [--n 96] [--models paper small] [--threads 1 2] [--workers 0 1 2] [--passes 1] [--lock /tmp/cpu.lock]
        [--contexts default forkserver spawn]  # the workers' start method

Two model directories with random weights (timing does not depend on what was learnt):
``paper`` = width 64 at 256² (ModelConfig defaults: ResNet-18 blocks, global + local);
``small`` = the ``--preset cpu --model both`` recipe (width 16, 128², blocks 1 1 1 1, the local model's
4 MS-SSIM weights for the global model; igd_fast/cli/presets.py). Each setting runs in a
fresh process (under ``flock LOCK`` when given: one lock per measurement) that builds a
``Scorer`` (batch 16, maps on, the default fp32 path), warms it up on one batch read in
the main process, then times ``--passes`` passes of ``Scorer.score_paths`` over the first
``--n`` images: wall time per pass (worker start-up included), the compute part
(``Scorer.runner.seconds``: networks + kernels + map resizing) and, with 0 workers, the time the
same process spends reading alone (the dataset + collate over all images, decode + resize
+ normalise): the share of the wall time a worker could hide.
"""

from __future__ import annotations

import argparse
import glob
import itertools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import functools, json, statistics, sys, time
import igd_fast  # before torch: sets OMP_WAIT_POLICY=PASSIVE as every verb runs
import torch
import igd_fast.score.runner as scorer_mod
from igd_fast.score import Scorer
from igd_fast.score.io import ScoreDataset, collate
model, threads, workers, passes, ctx = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
paths = sys.argv[6:]
torch.set_num_threads(threads)
sc = Scorer(model, device="cpu", batch_size=16)
for _ in sc.score_paths(paths[:16], 0):  # warm-up: oneDNN primitives for the batch shape
    pass
if ctx != "default" and workers > 0:  # the workers' start method (fork is Linux's default)
    scorer_mod.DataLoader = functools.partial(scorer_mod.DataLoader, multiprocessing_context=ctx)
walls, computes, first = [], [], []
for _ in range(passes):
    sc.reset_throughput()
    t0 = time.perf_counter()
    n = 0
    for r in sc.score_paths(paths, workers):
        if n == 0:
            first.append(time.perf_counter() - t0)
        n += 1
    walls.append(time.perf_counter() - t0)
    computes.append(sc.runner.seconds)
read = None
if workers == 0:
    ds = ScoreDataset(paths, sc.image_size)
    t0 = time.perf_counter()
    for i in range(0, len(ds), 16):
        collate([ds[j] for j in range(i, min(i + 16, len(ds)))])
    read = time.perf_counter() - t0
print(json.dumps({"n": n, "wall": statistics.median(walls), "compute": statistics.median(computes),
                  "first": statistics.median(first), "read": read}))
"""


def make_models(root: Path, names: list[str]) -> dict[str, Path]:
    import torch

    from igd_fast.checkpoint import save_checkpoint
    from igd_fast.cli.presets import CPU_TRAIN
    from igd_fast.models import IGD, ModelConfig

    out = {}
    for name in names:
        d = root / name
        d.mkdir()
        torch.manual_seed(0)
        for kind in ("global", "local"):
            if name == "paper":
                cfg = ModelConfig(kind=kind, image_size=256, width=64)
            else:
                extra = {"weights": tuple(CPU_TRAIN["global_weights"])} if kind == "global" else {}
                cfg = ModelConfig(kind=kind, image_size=CPU_TRAIN["image_size"], width=CPU_TRAIN["width"],
                                  blocks=tuple(CPU_TRAIN["blocks"]), **extra)  # fmt: skip
            m = IGD(cfg)
            m.descriptor.set(torch.randn(cfg.latent) * 0.1, 4.0)
            save_checkpoint(d / f"{kind}.pt", m)
        out[name] = d
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", help="glob of image files")
    p.add_argument("--n", type=int, default=96)
    p.add_argument("--models", nargs="+", default=["paper", "small"], choices=["paper", "small"])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--workers", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--contexts", nargs="+", default=["default"],
                   help="worker start methods: default (fork on Linux), forkserver, spawn")
    p.add_argument("--passes", type=int, default=1)
    p.add_argument("--lock", default=None, help="run each measurement under flock LOCK")
    p.add_argument("--json", default=None, help="append each result as a JSON line here")
    a = p.parse_args()
    paths = sorted(glob.glob(a.images))[: a.n]
    if not paths:
        sys.exit(f"no files match {a.images}")
    with tempfile.TemporaryDirectory() as tmp:
        models = make_models(Path(tmp), a.models)
        print(f"{len(paths)} images, {os.cpu_count()} CPUs\n")
        print("| model | threads | workers | wall s | images/s | compute s | wall - compute s | first result s |"
              " read alone s (share of wall) |\n|---|---|---|---|---|---|---|---|---|")  # fmt: skip
        for name, d in models.items():
            for t, w, ctx in itertools.product(a.threads, a.workers, a.contexts):
                cmd = [sys.executable, "-c", CHILD, str(d), str(t), str(w), str(a.passes), ctx, *paths]
                if a.lock:
                    cmd = ["flock", a.lock, *cmd]
                label = f"{w}" if ctx == "default" else f"{w} ({ctx})"
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode != 0:
                    print(f"| {name} | {t} | {label} | failed: {out.stderr.strip().splitlines()[-1:]} |")
                    continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
                read = f"{r['read']:.2f} ({100 * r['read'] / r['wall']:.0f} %)" if r["read"] is not None else "—"
                print(f"| {name} | {t} | {label} | {r['wall']:.2f} | {r['n'] / r['wall']:.1f} | {r['compute']:.2f} | "
                      f"{r['wall'] - r['compute']:.2f} | {r['first']:.2f} | {read} |", flush=True)
                if a.json:
                    with open(a.json, "a") as f:
                        f.write(json.dumps({"model": name, "threads": t, "workers": w, "context": ctx, **r}) + "\n")


if __name__ == "__main__":
    main()
