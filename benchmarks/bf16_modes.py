"""bf16 autocast vs weights converted to bf16 vs fp32 for the two width-64 networks
(BatchNorm folded, channels_last, 4 images of 256²: the global model on them, the local
one on their 900 patches), the modes timed in the order given:

    python benchmarks/bf16_modes.py fp32 autocast bf16-weights
"""

from __future__ import annotations

import copy
import statistics
import sys
import time

import torch

from igd_fast.models import IGD, ModelConfig
from igd_fast.models.fold import fold_batchnorm


def bench(fn, reps: int = 5) -> tuple[float, float, float]:
    fn()
    fn()  # two warm-ups: oneDNN builds its primitives on the first call of a shape
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts), min(ts), max(ts)


def modes(kind: str, n: int) -> dict:
    m = fold_batchnorm(IGD(ModelConfig(kind=kind, image_size=256, width=64))).eval()
    m = m.to(memory_format=torch.channels_last)
    s = m.config.input_size
    x = torch.randn(n, 3, s, s).contiguous(memory_format=torch.channels_last)
    mb, xb = copy.deepcopy(m).to(torch.bfloat16), x.to(torch.bfloat16)

    def autocast():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            m(x)

    return {"fp32": lambda: m(x), "autocast": autocast, "bf16-weights": lambda: mb(xb)}


def main() -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    for kind, n in (("global", 4), ("local", 900)):
        fns = modes(kind, n)
        with torch.inference_mode():
            for name in sys.argv[1:]:
                med, lo, hi = bench(fns[name])
                print(f"{kind} {name}: median {med * 1e3:.0f} ms (min {lo * 1e3:.0f}, max {hi * 1e3:.0f}) per 4 images")


if __name__ == "__main__":
    main()
