"""Peak RSS of each scoring path, one fresh process per path (a process's peak RSS only
grows, so paths timed side by side in one process cannot be told apart).

    MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=4294967296 \\
        python benchmarks/scoring_rss.py [--width 64] [--batch 4]

Each child builds the same random width-64 global + local models as
benchmarks/test_bench_scoring.py, scores one batch of 256² images three times and prints
its ru_maxrss; the parent prints one line per path (MB, and the increase over the RSS
after the models were built).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

PATHS = ("published-style", "fp32-unfolded", "fp32-folded", "bf16")


def _child(path: str, width: int, batch: int) -> dict:
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from test_bench_scoring import baseline_score

    from igd_fast.checkpoint import save_checkpoint
    from igd_fast.models import IGD, ModelConfig
    from igd_fast.score import Scorer

    torch.set_num_threads(int(os.environ.get("IGD_BENCH_THREADS", "2")))
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        for kind in ("global", "local"):
            m = IGD(ModelConfig(kind=kind, image_size=256, width=width))
            m.descriptor.set(torch.randn(m.config.latent) * 0.1, 4.0)
            save_checkpoint(Path(d) / f"{kind}.pt", m)
        kw = {"fp32-unfolded": {"fold_bn": False}, "bf16": {"precision": "bf16"}}.get(path, {})
        scorer = Scorer(d, device="cpu", **kw)
        x = torch.rand(batch, 3, 256, 256) * 4.7579 - 2.1179
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        for _ in range(3):
            if path == "published-style":
                baseline_score(x, scorer.global_model, scorer.local_model)
            else:
                scorer.score_batch(x)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"path": path, "peak_rss_mb": peak, "increase_mb": peak - before}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--child", choices=PATHS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(_child(a.child, a.width, a.batch)))
        return
    for path in PATHS:
        cmd = [sys.executable, __file__, "--child", path, "--width", str(a.width), "--batch", str(a.batch)]
        r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        print(f"{path:16s} peak RSS {r['peak_rss_mb']:7.0f} MB (+{r['increase_mb']:.0f} MB while scoring)", flush=True)


if __name__ == "__main__":
    main()
