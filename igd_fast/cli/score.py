"""``igd-fast score``: score a folder (or glob) of images with a trained model.

Writes to ``--out``:
  scores.csv      path, score, pred_score, pred_label, s_global, s_local: ``score`` raw;
                  ``pred_score`` in [0, 1] with the threshold at 0.5 (logistic scaled by
                  the validation-normal score spread, see igd_fast.score.threshold);
                  ``pred_label`` 1 = anomalous = pred_score > 0.5 = score > threshold
  scores.jsonl    the same rows as JSON lines (plus the files written) with ``--jsonl``
  overlays/REL.png   jet heat-map blended over each image, at the image's own size
  maps/REL.npy       raw per-pixel maps (float32, original size) with ``--save-maps``
  masks/REL.png      pred_mask (map > calibrated pixel threshold, 0/255) with ``--save-masks``
  <category>/test/<defect>/<id>.tiff   float32 maps for the MVTec AD / LOCO evaluators
                  with ``--save-tiff`` (inputs must lie in .../<category>/test/<defect>/)
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
import contextlib
import csv
import io
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from .. import _dist
from ..outputs import FolderInUse, OutputError, OutputPathError, inside, output_lock, save_npy, write_json, write_text
from ..score.threshold import NORMALISATION, normalise_scores, score_scale
from ._args import (
    EXIT_OK,
    EXIT_SKIPPED,
    EXIT_USAGE,
    UsageError,
    add_out,
    add_runtime,
    add_scoring,
    check_device_backend,
    check_out_dir,
    check_precision,
    examples,
    finite_float,
    network_options,
    open_fraction,
    scoring_options,
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
    p.add_argument("--save-masks", action="store_true",
                   help="also write pred_mask PNGs (map > calibrated pixel threshold; 255 = anomalous)")
    p.add_argument("--save-tiff", action="store_true",
                   help="also write float32 TIFF maps as OUT/<category>/test/<defect>/<id>.tiff (the MVTec AD / "
                        "LOCO evaluators' layout; inputs must lie in .../<category>/test/<defect>/)")
    p.add_argument("--jsonl", action="store_true", help="also write scores.jsonl (one JSON object per image)")
    p.add_argument("--no-overlays", action="store_true", help="skip the heat-map overlay PNGs")
    p.add_argument("--threshold", type=finite_float, default=None,
                   help="use this threshold instead of the calibrated one")
    p.add_argument("--alpha", type=open_fraction, default=None,
                   help="target false-alarm rate of the calibration (default 0.05)")
    p.add_argument("--runtime", choices=("torch", "onnxruntime", "openvino"), default="torch",
                   help="torch (default): --model is a model directory; onnxruntime / openvino: --model is a file "
                        "written by igd-fast export (.onnx / .xml, with its .json beside it)")
    add_scoring(p)
    add_runtime(p, scoring=True)


CSV_COLUMNS = ["path", "score", "pred_score", "pred_label", "s_global", "s_local"]


def output_name(path: Path, base: Path) -> str:
    """The input's path below ``base`` ('/'-separated, extension kept): sub/a.png stays
    sub/a.png, so outputs mirror the input tree and never collide."""
    try:
        rel = path.resolve().relative_to(base)
    except ValueError:
        rel = Path(*path.resolve().parts[1:])
    return rel.as_posix()


def _out_file(out: Path, sub: str, name: str, suffix: str) -> Path:
    """``out/sub/<name><suffix>``, checked to stay inside ``out`` (written atomically by the caller)."""
    return inside(out, sub, f"{name}{suffix}")


def _calibrate(scorer, args, proc: _dist.ProcessInfo) -> tuple[float | None, dict, str | None]:
    """(threshold, calibration record, error). Rank 0 calibrates and caches; the others
    receive its result (no second pass over the validation images). With --threshold
    the calibration is still used, when it can be had, for pred_score's scale and the
    pixel threshold; without it the scale falls back to |threshold| (or 1)."""
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
    if args.threshold is None:
        return result
    rec = dict(result[1])
    if not rec:
        rec["score_scale"] = score_scale([], args.threshold)
    rec.update(rule="given on the command line (--threshold)", threshold=args.threshold)
    return args.threshold, rec, None


def tiff_name(path: Path) -> str | None:
    """'<category>/test/<defect>/<id>.tiff' for an image at .../<category>/test/<defect>/<id>.<ext>
    (the nearest 'test' folder above it), else None."""
    parts = Path(os.path.abspath(path)).parts
    for i in range(len(parts) - 3, 1, -1):
        if parts[i] == "test":
            return Path(*parts[i - 1 : -1], Path(parts[-1]).stem + ".tiff").as_posix()
    return None


def _open(args: argparse.Namespace, proc: _dist.ProcessInfo):
    """The Scorer, after every check that can fail before scoring starts."""
    from .._dist import resolve_device
    from ..checkpoint import CheckpointError
    from ..score import Scorer
    from ..score.threshold import DEFAULT_ALPHA

    check_device_backend(args)
    check_precision(args)
    if args.runtime != "torch":
        return _open_exported(args)
    scoring = scoring_options(args)
    try:
        return Scorer(args.model, device=resolve_device(args.device, proc.local_rank), batch_size=args.batch_size,
                      backend=args.backend, alpha=DEFAULT_ALPHA if args.alpha is None else args.alpha,
                      **scoring, **network_options(args))  # fmt: skip
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        raise UsageError(f"--model {args.model}: {e}") from None


def _open_exported(args: argparse.Namespace):
    import importlib.util

    from ..export.runtime import ExportedScorer

    if args.alpha is not None:
        raise UsageError("--alpha recalibrates on the model directory's validation images; an exported model "
                         "carries its calibration (re-export, or pass --threshold)")  # fmt: skip
    from ..score.threshold import DEFAULT_SCORING

    changed = [k for k, v in scoring_options(args).items() if v != DEFAULT_SCORING[k]]
    if changed:
        flags = ", ".join("--" + k.replace("_", "-") for k in changed)
        raise UsageError(f"{flags}: an exported model computes the default score and map; use a model directory")
    if args.precision != "fp32" or args.compile:
        raise UsageError(f"--precision {args.precision} / --compile: an exported model runs in its runtime's "
                         "own precision and graph; use a model directory")  # fmt: skip
    if importlib.util.find_spec(args.runtime) is None:
        extra = "openvino" if args.runtime == "openvino" else "export"
        raise UsageError(f"--runtime {args.runtime} needs the {args.runtime} package: pip install 'igd_fast[{extra}]'")
    try:
        return ExportedScorer(args.model, args.runtime, args.batch_size)
    except (FileNotFoundError, ValueError, KeyError, RuntimeError) as e:
        raise UsageError(f"--model {args.model}: {e}") from None


def _base(spec: str, paths: list[Path]) -> Path:
    p_in = Path(spec)
    base = p_in if p_in.is_dir() else Path(os.path.commonpath([str(p.resolve().parent) for p in paths]))
    return base.resolve()


def _score_mine(scorer, args, paths: list[Path], proc: _dist.ProcessInfo, out: Path, vrange) -> tuple[list, list]:
    """Score this rank's share of ``paths``, writing overlays / maps / masks / TIFFs as they come."""
    from tqdm import tqdm

    from ..score import Failure, save_overlay
    from ..score.io import save_mask, save_tiff

    base = _base(args.input, paths)
    mine = list(range(proc.rank, len(paths), proc.world))
    rows, failed = [], []
    desc = "scoring" if proc.world == 1 else f"scoring (rank 0's shard of {proc.world})"
    bar = tqdm(total=len(mine), desc=desc, unit="img", disable=not proc.is_main or args.no_progress, file=sys.stderr)
    t, scale = args._threshold, float(args._calib["score_scale"])
    for r in scorer.score_paths([paths[i] for i in mine], args.workers, want_maps=True, indices=mine):
        bar.update(1)
        if isinstance(r, Failure):
            failed.append({"index": r.index, "path": r.path, "error": r.error})
            continue
        why = _not_finite(r)
        if why is not None:  # NaN is never "normal": an error for this image, never label 0
            failed.append({"index": r.index, "path": r.path, "error": why})
            continue
        args._n_done = getattr(args, "_n_done", 0) + 1
        name = output_name(Path(r.path), base)
        row = {"index": r.index, "path": r.path, "score": r.score,
               "pred_score": float(normalise_scores([r.score], t, scale)[0]), "pred_label": int(r.score > t),
               "s_global": r.s_global, "s_local": r.s_local}  # fmt: skip
        rows.append(row)
        if r.map is None:  # a variant without a per-pixel map (Deep SVDD): the score only
            continue
        # a threshold given by hand and no calibration: per-image colour scale
        lo, hi = (float(r.map.min()), float(r.map.max())) if vrange is None else vrange
        try:
            if not args.no_overlays:
                save_overlay(_out_file(out, "overlays", name, ".png"), r.path, r.map, lo, hi)
            if args.save_maps:
                row["anomaly_map"] = str(_out_file(out, "maps", name, ".npy"))
                save_npy(row["anomaly_map"], r.map.astype(np.float32))
            if args.save_masks:
                row["pred_mask"] = str(_out_file(out, "masks", name, ".png"))
                save_mask(row["pred_mask"], r.map > float(args._calib["pixel_threshold"]))
            if args.save_tiff:
                row["anomaly_map_tiff"] = str(inside(out, tiff_name(Path(r.path))))
                save_tiff(row["anomaly_map_tiff"], r.map)
        except (OSError, OutputPathError) as e:
            if isinstance(e, OutputError) and e.fatal:  # a full disk: every later write fails too
                raise
            failed.append({"index": r.index, "path": r.path, "error": f"writing outputs: {e}"})
    bar.close()
    return rows, failed


def _not_finite(r) -> str | None:
    """Why a scored image's result cannot be reported (a NaN/inf score or map), or None."""
    if not math.isfinite(r.score):
        return f"the score is {r.score} (not a number): the model's output for this image is not finite"
    if r.map is not None and not np.isfinite(r.map).all():
        return "the anomaly map holds NaN/inf values: the model's output for this image is not finite"
    return None


def _write(out: Path, args, scorer, parts: list[dict], n_inputs: int, threshold: float, calib: dict, world: int):
    rows = sorted((row for p in parts for row in p["rows"]), key=lambda row: row["index"])
    failed = sorted((f for p in parts for f in p["failed"]), key=lambda f: f["index"])
    f = io.StringIO(newline="")
    w = csv.writer(f)
    w.writerow(CSV_COLUMNS)
    for r in rows:
        # pred_score with 9 digits: values near 1 stay distinct
        w.writerow([r["path"], f"{r['score']:.6f}", f"{r['pred_score']:.9f}", r["pred_label"],
                    f"{r['s_global']:.6f}", f"{r['s_local']:.6f}"])  # fmt: skip
    write_text(out / "scores.csv", f.getvalue())
    if args.jsonl:
        write_text(out / "scores.jsonl", "".join(json.dumps({k: v for k, v in r.items() if k != "index"}) + "\n"
                                                 for r in rows))  # fmt: skip
    wall_max = max(p["wall"] for p in parts)
    summary = {
        "model": str(Path(args.model).resolve()),
        "models": list(scorer.kinds),
        "input": str(args.input),
        "n_inputs": n_inputs,
        "n_scored": len(rows),
        "n_skipped": len({f["path"] for f in failed}),
        "n_anomalous": sum(r["pred_label"] for r in rows),
        "skipped": [{"path": f["path"], "error": f["error"]} for f in failed],
        "threshold": threshold,
        "threshold_rule": calib.get("rule"),
        "alpha": calib.get("alpha"),
        "n_validation": calib.get("n_validation"),
        "score_scale": calib.get("score_scale"),
        "normalisation": calib.get("normalisation", NORMALISATION),
        "pixel_threshold": calib.get("pixel_threshold"),
        "pixel_rule": calib.get("pixel_rule"),
        "scoring": scorer.scoring,
        "precision": getattr(scorer, "precision_record", {"requested": "fp32", "runtime": args.runtime}),
        "compiled": getattr(scorer, "compiled", False),
        "world_size": world,
        "device": str(scorer.device),
        "backend": args.backend,
        "workers": args.workers,
        "wall_seconds": wall_max,
        "images_per_second": len(rows) / wall_max if wall_max > 0 else 0.0,
        "images_per_second_scoring_per_rank": [p["ips"] for p in parts],
        "exit_code": EXIT_SKIPPED if failed else EXIT_OK,
    }
    write_json(out / "summary.json", summary)
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

    if not args.input.strip():
        print("igd-fast score: error: --input is empty (an unset shell variable?): name a folder or a glob pattern",
              file=sys.stderr)  # fmt: skip
        return EXIT_USAGE
    if os.path.isdir(args.input) and os.path.realpath(args.input) == os.path.realpath(args.out):
        print(f"igd-fast score: error: --out {args.out} is the --input folder: its overlays would be scored as inputs "
              "by the next run; write to another folder (a sub-folder of the input is fine)", file=sys.stderr)
        return EXIT_USAGE
    paths = list_images(args.input, exclude=[args.out])  # never our own outputs
    if not paths:
        print(f"igd-fast score: error: no image files match {args.input}", file=sys.stderr)
        return EXIT_USAGE
    outside = [p for p in paths if tiff_name(p) is None] if args.save_tiff else []
    if outside:
        print(f"igd-fast score: error: --save-tiff needs inputs in the MVTec layout "
              f".../<category>/test/<defect>/<id>.png; {outside[0]} is not"
              + (f" (and {len(outside) - 1} more)" if len(outside) > 1 else ""), file=sys.stderr)  # fmt: skip
        return EXIT_USAGE
    if args.save_tiff:
        seen: dict[str, Path] = {}
        for p in paths:
            other = seen.setdefault(tiff_name(p), p)
            if other != p:  # the evaluators' layout drops the extension: a.png and a.jpg collide
                print(f"igd-fast score: error: --save-tiff: {other} and {p} would both be written to "
                      f"{tiff_name(p)}", file=sys.stderr)  # fmt: skip
                return EXIT_USAGE
    proc = _dist.init()
    out = Path(args.out)
    try:
        check_out_dir(out)
        # one run per output folder: a second one would interleave its files with ours
        with output_lock(out) if proc.is_main else contextlib.nullcontext():
            return _run_locked(args, paths, proc, out)
    except (UsageError, FolderInUse) as e:
        if proc.is_main:
            print(f"igd-fast score: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OutputError as e:
        print(f"igd-fast score: error: {e}; stopped after {getattr(args, '_n_done', 0)} of {len(paths)} images "
              f"(every file written to {out} is complete; free space and rerun)", file=sys.stderr)  # fmt: skip
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"igd-fast score: interrupted after {getattr(args, '_n_done', 0)} of {len(paths)} images; every file "
              f"written to {out} is complete, scores.csv and summary.json were not written by this run; rerun to "
              "score all", file=sys.stderr)  # fmt: skip
        return EXIT_USAGE
    finally:
        _dist.close()


def _run_locked(args: argparse.Namespace, paths: list[Path], proc: _dist.ProcessInfo, out: Path) -> int:
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
    if args.save_masks and "pixel_threshold" not in calib:
        if proc.is_main:
            print("igd-fast score: error: --save-masks needs the calibrated pixel threshold, and the "
                  "calibration failed (run.json lists no readable validation images)", file=sys.stderr)  # fmt: skip
        return EXIT_USAGE
    args._threshold, args._calib = threshold, calib
    vrange = scorer.map_range() if "map_low" in calib else None
    t0 = time.perf_counter()
    rows, failed = _score_mine(scorer, args, paths, proc, out, vrange)
    part = {"rows": rows, "failed": failed, "wall": time.perf_counter() - t0, "ips": scorer.images_per_second}
    parts = _dist.gather_objects(part)
    code = _write(out, args, scorer, parts, len(paths), threshold, calib, proc.world) if proc.is_main else EXIT_OK
    return int(_dist.broadcast_object(code))
