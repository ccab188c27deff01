"""Scoring throughput for OpenMP threads × wait policy × DataLoader workers.

    python benchmarks/score_threads.py MODEL_DIR "IMAGES/*.png" [--repeat 4]

Each setting runs in a fresh process (libgomp reads OMP_WAIT_POLICY once, when torch
loads it). Run it on an idle machine and again while other work keeps the cores busy:
the default rule (README, "Threads and workers") comes from both.
"""

from __future__ import annotations

import argparse
import glob
import itertools
import os
import subprocess
import sys

CHILD = """
import sys, time, glob, torch
from igd_fast.score import Scorer
threads, workers, pattern, repeat = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
torch.set_num_threads(threads)
paths = sorted(glob.glob(pattern)) * repeat
scorer = Scorer(sys.argv[5], device="cpu", batch_size=8)
t0 = time.perf_counter()
n = sum(1 for _ in scorer.score_paths(paths, workers))
print(n / (time.perf_counter() - t0))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("images", help="glob of image files")
    p.add_argument("--repeat", type=int, default=4, help="pass over the images this many times")
    a = p.parse_args()
    if not glob.glob(a.images):
        sys.exit(f"no files match {a.images}")
    print("| OMP_WAIT_POLICY | threads | workers | img/s |\n|---|---|---|---|")
    for policy, threads, workers in itertools.product(("ACTIVE", "PASSIVE"), (1, 2), (0, 1)):
        env = {**os.environ, "OMP_WAIT_POLICY": policy}
        out = subprocess.run([sys.executable, "-c", CHILD, str(threads), str(workers), a.images, str(a.repeat),
                              a.model], env=env, capture_output=True, text=True, check=True)  # fmt: skip
        print(f"| {policy} | {threads} | {workers} | {float(out.stdout.split()[-1]):.1f} |")


if __name__ == "__main__":
    main()
