"""Peak RSS and time of the defect component on one large working image, whole or in the
default tiles (igd_fast/score/tiling.py), with an untrained default-width defect model. Run
each mode in its own process (peak RSS is per process):

    python benchmarks/tiling_rss.py whole 1536
    python benchmarks/tiling_rss.py tiled 1536
"""

from __future__ import annotations

import resource
import sys
import time

import torch

from igd_fast.models.defect import DefectConfig, DefectModel
from igd_fast.score.components import DEFECT_TILER, DefectPart


def main() -> None:
    mode, side = sys.argv[1], int(sys.argv[2])
    if mode not in ("whole", "tiled"):
        raise SystemExit("mode: whole or tiled")
    torch.set_num_threads(2)
    model = DefectModel(DefectConfig()).eval()
    norm = {"logit_mean": 0.0, "logit_std": 1.0, "resid_mean": 0.1, "resid_std": 0.5, "resid_weight": 1.0}
    part = DefectPart(model, norm, DEFECT_TILER if mode == "tiled" else None)
    x = torch.randn(1, 3, side, side)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    t = time.perf_counter()
    with torch.inference_mode():
        part(x)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"{mode} {side}²: peak RSS {peak:.2f} GB (before scoring {before:.2f} GB), {time.perf_counter() - t:.1f} s")


if __name__ == "__main__":
    main()
