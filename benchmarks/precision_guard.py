"""The ``precision="auto"`` guard on trained model directories, and their scoring speed in
fp32 and bf16 (both with the fp32 calibration, reading excluded: ``Scorer.images_per_second``).

    python benchmarks/precision_guard.py RUN_DIR [RUN_DIR ...] [--images N] [--json OUT.json]
        [--no-guard | --no-speed]

Each directory is copied to a temporary folder first (calibrating writes threshold.json into
the model directory; the originals are only read); its cached fp32 calibration is reused when
current. The guard's verdict does not depend on timing (run it anywhere); the speed part
times the first N (default 12) validation normals of the directory's run.json (run it under
the CPU lock).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from igd_fast.checkpoint import validation_files
from igd_fast.score import Scorer
from igd_fast.score.precision import bf16_support


def one(run_dir: Path, n_images: int, guard: bool, speed: bool) -> dict:
    work = Path(tempfile.mkdtemp(prefix="guard_")) / run_dir.name
    shutil.copytree(run_dir, work, ignore=shutil.ignore_patterns("eval*"))
    t0 = time.perf_counter()
    first = Scorer(work, device="cpu", precision="auto" if guard else "fp32")
    calib = first.calibration()
    seconds = time.perf_counter() - t0  # the fp32 calibration (unless cached) + the guard's two passes
    out = {"model": str(run_dir), "components": list(first.kinds), "calibrate_and_guard_s": seconds,
           "precision": first.precision_record}  # fmt: skip
    if not speed:
        return out
    files = validation_files(work)[:n_images]
    for p in ("fp32", "bf16"):
        if p == "bf16" and bf16_support(torch.device("cpu")) is not None:
            continue
        s = Scorer(work, device="cpu", precision=p)
        s.use_calibration(calib)
        list(s.score_paths(files[:2]))  # warm-up (oneDNN primitives per shape)
        s.reset_throughput()
        list(s.score_paths(files))
        out[f"images_per_s_{p}"] = s.images_per_second
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--no-guard", dest="guard", action="store_false", help="speed only (fp32 calibration)")
    ap.add_argument("--no-speed", dest="speed", action="store_false", help="the guard's verdict only")
    a = ap.parse_args()
    torch.set_num_threads(2)
    res = []
    for r in a.runs:
        rec = one(r, a.images, a.guard, a.speed)
        v = rec["precision"].get("guard_values", {})
        print(f"{r.name}: {rec['precision'].get('reason', 'fp32')}; models {rec['precision']['models']}; "
              f"flips {v.get('image_flips')}, score_err {v.get('score_err')}, pixel_flips {v.get('pixel_flips')}, "
              f"map_err_share {v.get('map_err_share')}, max_map_err {v.get('max_map_err')}; "
              f"{rec['calibrate_and_guard_s']:.1f} s; images/s fp32 {rec.get('images_per_s_fp32', 0):.2f}, "
              f"bf16 {rec.get('images_per_s_bf16', 0):.2f}", flush=True)  # fmt: skip
        res.append(rec)
        if a.json:  # after each directory: a run cut short keeps what it measured
            a.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
