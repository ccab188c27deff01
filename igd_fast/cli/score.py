"""``igd-fast score``: score a folder (or glob) of images with a trained model.

Writes to ``--output``:
  scores.csv      path, score, s_global, s_local, label (1 = anomalous: score > threshold)
  overlays/NAME.png  jet heat-map blended over each image, at the image's own size
  maps/NAME.npy      raw per-pixel maps (float32, original size) with ``--save-maps``
  (NAME: the input's path below the input folder with '/' -> '__', e.g. sub__a.jpg)
  summary.json    counts, threshold and its rule, throughput, skipped files and why

Exit codes: 0 all scored; 2 bad arguments / nothing to score / no threshold;
3 some files could not be read (they are listed in summary.json, the rest are scored).

Under ``torchrun --nproc_per_node N`` every rank scores every N-th image (gloo is
enough: only small Python objects are exchanged) and rank 0 merges one scores.csv.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_SKIPPED = 3


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = (
        "exit codes: 0 all scored; 2 bad arguments, nothing to score or no threshold; "
        "3 some files could not be read (listed in summary.json; the rest were scored). "
        "Multi-process: torchrun --nproc_per_node N -m igd_fast score ..."
    )
    p.add_argument("--model", required=True, help="trained model directory (global.pt, local.pt, run.json)")
    p.add_argument("--input", required=True, help="folder (searched recursively) or glob pattern of images")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--save-maps", action="store_true", help="also write raw per-pixel maps as .npy")
    p.add_argument("--no-overlays", action="store_true", help="skip the heat-map overlay PNGs")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="DataLoader workers")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--backend", default=None, help="kernel backend override (cpu, cuda, triton, torch)")
    p.add_argument("--threshold", type=float, default=None, help="use this threshold instead of the calibrated one")
    p.add_argument("--alpha", type=float, default=None, help="target false-alarm rate of the calibration")


def output_name(path: Path, base: Path) -> str:
    """A flat, unique name for an input's outputs: its path below ``base`` joined with
    '__', extension kept (so a.png and a.jpg do not collide): sub/a.png -> sub__a.png."""
    try:
        rel = path.resolve().relative_to(base)
    except ValueError:
        rel = Path(*path.resolve().parts[1:])
    return "__".join(rel.parts)


class _Dist:
    """The torchrun environment, or a single process."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.active = self.world > 1
        if self.active and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("gloo")

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def gather(self, obj):
        """Every rank's ``obj`` on rank 0 (a list in rank order); None elsewhere."""
        if not self.active:
            return [obj]
        out = [None] * self.world if self.rank == 0 else None
        torch.distributed.gather_object(obj, out, dst=0)
        return out

    def broadcast(self, obj):
        if not self.active:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.active and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _device(args: argparse.Namespace, dist: _Dist) -> torch.device:
    if args.device is not None:
        return torch.device(args.device)
    if torch.cuda.is_available():
        return torch.device("cuda", dist.local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def _calibrate(scorer, args, dist: _Dist) -> tuple[float | None, dict, str | None]:
    """(threshold, calibration record, error). Rank 0 calibrates and caches; the others
    receive its result (no second pass over the validation images)."""
    if args.threshold is not None:
        return args.threshold, {"rule": "given on the command line (--threshold)"}, None
    result = None
    if dist.rank == 0:
        try:
            rec = scorer.calibration(args.workers)
            result = (float(rec["threshold"]), rec, None)
        except (OSError, ValueError, KeyError) as e:
            result = (None, {}, f"cannot calibrate a threshold: {e}; pass --threshold")
    result = dist.broadcast(result)
    if result[0] is not None:
        scorer._calibration = result[1]
    return result


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..score import Failure, Scorer, list_images, save_overlay
    from ..score.threshold import DEFAULT_ALPHA

    paths = list_images(args.input)
    if not paths:
        print(f"igd-fast score: no image files match {args.input}", file=sys.stderr)
        return EXIT_USAGE
    dist = _Dist()
    try:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        scorer = Scorer(
            args.model,
            device=_device(args, dist),
            batch_size=args.batch_size,
            backend=args.backend,
            alpha=DEFAULT_ALPHA if args.alpha is None else args.alpha,
        )
        threshold, calib, err = _calibrate(scorer, args, dist)
        if err is not None:
            if dist.rank == 0:
                print(f"igd-fast score: {err}", file=sys.stderr)
            return EXIT_USAGE
        vrange = scorer.map_range() if "map_low" in calib else None
        overlays = not args.no_overlays
        if overlays:
            (out / "overlays").mkdir(exist_ok=True)
        if args.save_maps:
            (out / "maps").mkdir(exist_ok=True)
        p_in = Path(args.input)
        base = p_in if p_in.is_dir() else Path(os.path.commonpath([str(p.resolve().parent) for p in paths]))
        base = base.resolve()

        mine = list(range(dist.rank, len(paths), dist.world))
        rows, failed = [], []
        t0 = time.perf_counter()
        desc = "scoring" if dist.world == 1 else f"scoring (rank 0's shard of {dist.world})"
        bar = tqdm(total=len(mine), desc=desc, unit="img", disable=dist.rank != 0, file=sys.stderr)
        for r in scorer.score_paths([paths[i] for i in mine], args.workers, want_maps=True, indices=mine):
            bar.update(1)
            if isinstance(r, Failure):
                failed.append({"index": r.index, "path": r.path, "error": r.error})
                continue
            name = output_name(Path(r.path), base)
            if vrange is None:  # a threshold given by hand and no calibration: per-image scale
                lo, hi = float(r.map.min()), float(r.map.max())
            else:
                lo, hi = vrange
            if overlays:
                try:
                    save_overlay(out / "overlays" / f"{name}.png", r.path, r.map, lo, hi)
                except OSError as e:
                    failed.append({"index": r.index, "path": r.path, "error": f"overlay: {e}"})
            if args.save_maps:
                np.save(out / "maps" / f"{name}.npy", r.map.astype(np.float32))
            rows.append((r.index, r.path, r.score, r.s_global, r.s_local, int(r.score > threshold)))
        bar.close()
        wall = time.perf_counter() - t0
        parts = dist.gather({"rows": rows, "failed": failed, "wall": wall, "ips": scorer.images_per_second})
        code = EXIT_OK
        if dist.rank == 0:
            rows = sorted((row for p in parts for row in p["rows"]), key=lambda row: row[0])
            failed = sorted((f for p in parts for f in p["failed"]), key=lambda f: f["index"])
            with open(out / "scores.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["path", "score", "s_global", "s_local", "label"])
                for _, path, s, sg, sl, lab in rows:
                    w.writerow([path, f"{s:.6f}", f"{sg:.6f}", f"{sl:.6f}", lab])
            wall_max = max(p["wall"] for p in parts)
            summary = {
                "model": str(Path(args.model).resolve()),
                "input": str(args.input),
                "n_inputs": len(paths),
                "n_scored": len(rows),
                "n_skipped": len({f["path"] for f in failed}),
                "n_anomalous": sum(row[5] for row in rows),
                "skipped": [{"path": f["path"], "error": f["error"]} for f in failed],
                "threshold": threshold,
                "threshold_rule": calib.get("rule"),
                "alpha": calib.get("alpha"),
                "n_validation": calib.get("n_validation"),
                "world_size": dist.world,
                "device": str(scorer.device),
                "backend": args.backend,
                "wall_seconds": wall_max,
                "images_per_second": len(rows) / wall_max if wall_max > 0 else 0.0,
                "images_per_second_scoring_per_rank": [p["ips"] for p in parts],
                "exit_code": EXIT_SKIPPED if failed else EXIT_OK,
            }
            (out / "summary.json").write_text(json.dumps(summary, indent=2))
            print(
                f"scored {len(rows)}/{len(paths)} images ({summary['images_per_second']:.1f} img/s), "
                f"{summary['n_anomalous']} above threshold {threshold:.6g}; "
                f"{summary['n_skipped']} skipped -> {out / 'scores.csv'}",
                file=sys.stderr,
            )
            for f in failed:
                print(f"  skipped {f['path']}: {f['error']}", file=sys.stderr)
            code = summary["exit_code"]
        return int(dist.broadcast(code))
    finally:
        dist.close()
