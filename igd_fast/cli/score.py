"""``igd-fast score``: score a folder (or glob) of images with a trained model.

Writes to ``--out``:
  scores.csv      path, score, s_global, s_local, label (1 = anomalous: score > threshold)
  overlays/REL.png   jet heat-map blended over each image, at the image's own size
  maps/REL.npy       raw per-pixel maps (float32, original size) with ``--save-maps``
  (REL: the input's path below the input folder, sub-folders kept and the extension
  kept in the name, e.g. sub/a.jpg -> overlays/sub/a.jpg.png: two inputs never share
  an output file)
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

from .. import _dist
from ._args import (
    EXIT_OK,
    EXIT_SKIPPED,
    EXIT_USAGE,
    UsageError,
    add_out,
    add_runtime,
    check_device_backend,
    check_out_dir,
    examples,
    finite_float,
    open_fraction,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = (
        "exit codes: 0 all scored; 2 bad arguments, nothing to score or no threshold; "
        "3 some files could not be read (listed in summary.json; the rest were scored).\n\n"
        + examples(
            'igd-fast score --model models/bottle --input photos/ --out scored/',
            'igd-fast score --model models/bottle --input "photos/*.png" --out scored/ --save-maps --no-overlays',
            "torchrun --nproc_per_node 2 -m igd_fast score --model models/bottle --input photos/ --out scored/",
        )
    )
    p.add_argument("--model", required=True, metavar="DIR",
                   help="trained model directory (global.pt and/or local.pt, run.json)")
    p.add_argument("--input", required=True, help="folder (searched recursively) or glob pattern of images")
    add_out(p, True, "output folder (created; checked writable before scoring)")
    p.add_argument("--save-maps", action="store_true", help="also write raw per-pixel maps as .npy")
    p.add_argument("--no-overlays", action="store_true", help="skip the heat-map overlay PNGs")
    p.add_argument("--threshold", type=finite_float, default=None,
                   help="use this threshold instead of the calibrated one")
    p.add_argument("--alpha", type=open_fraction, default=None,
                   help="target false-alarm rate of the calibration (default 0.05)")
    add_runtime(p)


def output_name(path: Path, base: Path) -> str:
    """The input's path below ``base`` ('/'-separated, extension kept): sub/a.png stays
    sub/a.png, so outputs mirror the input tree and never collide."""
    try:
        rel = path.resolve().relative_to(base)
    except ValueError:
        rel = Path(*path.resolve().parts[1:])
    return rel.as_posix()


def _out_file(folder: Path, name: str, suffix: str) -> Path:
    f = folder / f"{name}{suffix}"
    f.parent.mkdir(parents=True, exist_ok=True)
    return f


def _calibrate(scorer, args, proc: _dist.ProcessInfo) -> tuple[float | None, dict, str | None]:
    """(threshold, calibration record, error). Rank 0 calibrates and caches; the others
    receive its result (no second pass over the validation images)."""
    if args.threshold is not None:
        return args.threshold, {"rule": "given on the command line (--threshold)"}, None
    result = None
    if proc.is_main:
        try:
            rec = scorer.calibration(args.workers)
            result = (float(rec["threshold"]), rec, None)
        except (OSError, ValueError, KeyError) as e:
            result = (None, {}, f"cannot calibrate a threshold: {e}; pass --threshold")
    result = _dist.broadcast_object(result)
    if result[0] is not None:
        scorer._calibration = result[1]
    return result


def _open(args: argparse.Namespace, proc: _dist.ProcessInfo):
    """The Scorer, after every check that can fail before scoring starts."""
    from .._dist import resolve_device
    from ..checkpoint import CheckpointError
    from ..score import Scorer
    from ..score.threshold import DEFAULT_ALPHA

    check_device_backend(args)
    check_out_dir(args.out)
    try:
        return Scorer(args.model, device=resolve_device(args.device, proc.local_rank), batch_size=args.batch_size,
                      backend=args.backend, alpha=DEFAULT_ALPHA if args.alpha is None else args.alpha)  # fmt: skip
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        raise UsageError(f"--model {args.model}: {e}") from None


def _base(spec: str, paths: list[Path]) -> Path:
    p_in = Path(spec)
    base = p_in if p_in.is_dir() else Path(os.path.commonpath([str(p.resolve().parent) for p in paths]))
    return base.resolve()


def _score_mine(scorer, args, paths: list[Path], proc: _dist.ProcessInfo, out: Path, vrange) -> tuple[list, list]:
    """Score this rank's share of ``paths``, writing overlays / maps as they come."""
    from tqdm import tqdm

    from ..score import Failure, save_overlay

    base = _base(args.input, paths)
    mine = list(range(proc.rank, len(paths), proc.world))
    rows, failed = [], []
    desc = "scoring" if proc.world == 1 else f"scoring (rank 0's shard of {proc.world})"
    bar = tqdm(total=len(mine), desc=desc, unit="img", disable=not proc.is_main or args.no_progress, file=sys.stderr)
    for r in scorer.score_paths([paths[i] for i in mine], args.workers, want_maps=True, indices=mine):
        bar.update(1)
        if isinstance(r, Failure):
            failed.append({"index": r.index, "path": r.path, "error": r.error})
            continue
        name = output_name(Path(r.path), base)
        if r.map is None:  # a variant without a per-pixel map (Deep SVDD): the score only
            rows.append((r.index, r.path, r.score, r.s_global, r.s_local, int(r.score > args._threshold)))
            continue
        # a threshold given by hand and no calibration: per-image colour scale
        lo, hi = (float(r.map.min()), float(r.map.max())) if vrange is None else vrange
        if not args.no_overlays:
            try:
                save_overlay(_out_file(out / "overlays", name, ".png"), r.path, r.map, lo, hi)
            except OSError as e:
                failed.append({"index": r.index, "path": r.path, "error": f"overlay: {e}"})
        if args.save_maps:
            np.save(_out_file(out / "maps", name, ".npy"), r.map.astype(np.float32))
        rows.append((r.index, r.path, r.score, r.s_global, r.s_local, int(r.score > args._threshold)))
    bar.close()
    return rows, failed


def _write(out: Path, args, scorer, parts: list[dict], n_inputs: int, threshold: float, calib: dict, world: int):
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
        "models": list(scorer.kinds),
        "input": str(args.input),
        "n_inputs": n_inputs,
        "n_scored": len(rows),
        "n_skipped": len({f["path"] for f in failed}),
        "n_anomalous": sum(row[5] for row in rows),
        "skipped": [{"path": f["path"], "error": f["error"]} for f in failed],
        "threshold": threshold,
        "threshold_rule": calib.get("rule"),
        "alpha": calib.get("alpha"),
        "n_validation": calib.get("n_validation"),
        "world_size": world,
        "device": str(scorer.device),
        "backend": args.backend,
        "workers": args.workers,
        "wall_seconds": wall_max,
        "images_per_second": len(rows) / wall_max if wall_max > 0 else 0.0,
        "images_per_second_scoring_per_rank": [p["ips"] for p in parts],
        "exit_code": EXIT_SKIPPED if failed else EXIT_OK,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(
        f"scored {len(rows)}/{n_inputs} images ({summary['images_per_second']:.1f} img/s), "
        f"{summary['n_anomalous']} above threshold {threshold:.6g}; "
        f"{summary['n_skipped']} skipped -> {out / 'scores.csv'}",
        file=sys.stderr,
    )
    for f in failed:
        print(f"  skipped {f['path']}: {f['error']}", file=sys.stderr)
    return summary["exit_code"]


def run(args: argparse.Namespace) -> int:
    from ..score import list_images

    paths = list_images(args.input)
    if not paths:
        print(f"igd-fast score: error: no image files match {args.input}", file=sys.stderr)
        return EXIT_USAGE
    proc = _dist.init()
    try:
        try:
            scorer = _open(args, proc)
        except UsageError as e:
            if proc.is_main:
                print(f"igd-fast score: error: {e}", file=sys.stderr)
            return EXIT_USAGE
        threshold, calib, err = _calibrate(scorer, args, proc)
        if err is not None:
            if proc.is_main:
                print(f"igd-fast score: error: {err}", file=sys.stderr)
            return EXIT_USAGE
        args._threshold = threshold
        vrange = scorer.map_range() if "map_low" in calib else None
        out = Path(args.out)
        t0 = time.perf_counter()
        rows, failed = _score_mine(scorer, args, paths, proc, out, vrange)
        part = {"rows": rows, "failed": failed, "wall": time.perf_counter() - t0, "ips": scorer.images_per_second}
        parts = _dist.gather_objects(part)
        code = _write(out, args, scorer, parts, len(paths), threshold, calib, proc.world) if proc.is_main else EXIT_OK
        return int(_dist.broadcast_object(code))
    finally:
        _dist.close()
