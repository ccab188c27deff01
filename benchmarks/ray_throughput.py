"""Images/s of scoring on Ray (1 and 2 actors of one CPU each) beside the local scorer (one
process, as many torch threads as cores), on a local Ray cluster of this machine's cores.

    python benchmarks/ray_throughput.py [--model DIR] [--images 240] [--repeat 3]

Without --model it trains ``igd-fast demo``'s model into ``--work`` (a few CPU minutes, once).
The images are the demo's test images repeated to ``--images`` files. Scores only (no
overlays or maps), batch 16. Per setting, the median over ``--repeat`` runs of:
  steady   images after the first batch / time from the first batch to the last (the
           actors running; for the local scorer, its whole loop)
  end-to-end  images / time from submitting the dataset to its last row (actor start-up
           included: Ray starts fresh actors for every dataset)
Run under ``flock /work/lab/bench.lock`` on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _demo_model(work: Path) -> Path:
    model = work / "demo" / "model"
    if not (model / "global.pt").is_file():
        subprocess.run([sys.executable, "-m", "igd_fast", "demo", "--out", str(work / "demo"), "--no-progress"],
                       check=True)  # fmt: skip
    return model


def _images(model: Path, work: Path, n: int) -> list[str]:
    from igd_fast.checkpoint import validation_files

    src = sorted((model.parent / "data").rglob("test/*/*.png")) or validation_files(model)
    folder = work / f"images_{n}"
    if not folder.is_dir() or len(list(folder.glob("*.png"))) != n:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for i in range(n):
            shutil.copyfile(src[i % len(src)], folder / f"{i:05d}.png")
    return sorted(str(p) for p in folder.glob("*.png"))


def _local(model: Path, paths: list[str]) -> tuple[float, float]:
    import torch

    from igd_fast.score import Scorer

    torch.set_num_threads(os.cpu_count() or 1)
    scorer = Scorer(model, "cpu", batch_size=16)
    scorer.calibration()
    t0 = time.perf_counter()
    n = sum(1 for _ in scorer.score_paths(paths))
    ips = n / (time.perf_counter() - t0)
    return ips, ips


def _ray(model: Path, paths: list[str], workers: int) -> tuple[float, float]:
    from igd_fast.score.ray_engine import score_dataset

    t0 = time.perf_counter()
    first = None
    n = n_first = 0
    ds = score_dataset(paths, model, workers=workers, batch_size=16)
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        n += len(batch["index"])
        if first is None:
            first, n_first = time.perf_counter(), n
    end = time.perf_counter()
    return (n - n_first) / (end - first), n / (end - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="model directory (default: the demo's, trained once)")
    p.add_argument("--images", type=int, default=240)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--work", type=Path, default=Path("/tmp/igd_ray_bench"))
    a = p.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    model = a.model or _demo_model(a.work)
    paths = _images(model, a.work, a.images)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_worker_niceness", "0")  # as igd-fast score --engine ray's local cluster
    import ray

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    settings = {"local scorer (1 process, all cores)": lambda: _local(model, paths),
                "ray, 1 worker × 1 CPU": lambda: _ray(model, paths, 1),
                "ray, 2 workers × 1 CPU": lambda: _ray(model, paths, 2)}  # fmt: skip
    runs: dict[str, list[tuple[float, float]]] = {k: [] for k in settings}
    for _ in range(a.repeat):
        for name, run in settings.items():
            runs[name].append(run())
            print(f"{name}: steady {runs[name][-1][0]:.1f}, end-to-end {runs[name][-1][1]:.1f} img/s", flush=True)
    ray.shutdown()
    print(f"{len(paths)} images, {a.repeat} runs each, {os.cpu_count()} cores\n")
    print("| setting | steady img/s (median) | end-to-end img/s (median) |\n|---|---|---|")
    for name, r in runs.items():
        print(f"| {name} | {statistics.median(x for x, _ in r):.1f} | {statistics.median(y for _, y in r):.1f} |")


if __name__ == "__main__":
    main()
