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
  summary.json    counts, threshold and its rule, the scoring recipe (each value and its
                  source: model, preset, flag or default), throughput, skipped files and why
  report.html     with ``--html``: the results page (igd_fast.report_page), one
                  self-contained file

Exit codes: 0 all scored; 2 bad arguments / nothing to score / no threshold;
3 some files could not be read (they are listed in summary.json, the rest are scored).

Under ``torchrun --nproc_per_node N`` every rank scores every N-th image (gloo is
enough: only small Python objects are exchanged) and rank 0 merges one scores.csv.
With ``--engine ray`` Ray actors score and write the per-image files, this process writes
the rest (:mod:`igd_fast.cli.score_ray`), and ``OUT/.igd-fast-scored/`` keeps what is done
so that a rerun skips it.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from .. import _dist
from ..outputs import FolderInUse, OutputError, output_lock, strict_json, write_json, write_text
from ..score.decide import decision_record
from ..score.image_outputs import CSV_COLUMNS, ImageOutputs, output_name, report, tiff_name
from ..score.postprocess import PostProcessor
from ..score.threshold import NORMALISATION
from ._args import (
    EXIT_OK,
    EXIT_SKIPPED,
    EXIT_USAGE,
    UsageError,
    add_out,
    add_runtime,
    check_device_backend,
    check_out_dir,
    check_precision,
    examples,
    finite_float,
    open_fraction,
)
from .recipe_flags import add_recipe_flags, given_options, resolve_recipe
from .score_ray import add_engine_flags, check_engine

GIVEN_RULE = "given on the command line (--threshold)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = (
        "exit codes: 0 all scored; 2 bad arguments, nothing to score or no threshold; "
        "3 some files could not be read (listed in summary.json; the rest were scored).\n\n"
        + examples(
            'igd-fast score --model models/bottle --input photos/ --out scored/',
            'igd-fast score --model models/bottle --input "photos/*.png" --out scored/ --save-maps --no-overlays',
            "torchrun --nproc_per_node 2 -m igd_fast score --model models/bottle --input photos/ --out scored/",
            "igd-fast score --model /shared/bottle --input /shared/photos --out /shared/scored --engine ray "
            "--address HEAD:6379",
        )
    )
    p.add_argument("--model", required=True, metavar="DIR",
                   help="trained model directory (global.pt, local.pt and/or defect.pt, run.json, recipe.json)")
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
    p.add_argument("--html", action="store_true",
                   help="also write OUT/report.html: one self-contained page (thresholds, score histogram, every "
                        "image's thumbnail, heat-map and pred_mask outline, sortable and filterable)")
    p.add_argument("--threshold", type=finite_float, default=None,
                   help="use this threshold instead of the calibrated one")
    p.add_argument("--alpha", type=open_fraction, default=None,
                   help="target false-alarm rate of the calibration (default 0.05)")
    p.add_argument("--runtime", choices=("torch", "onnxruntime", "openvino"), default="torch",
                   help="torch (default): --model is a model directory; onnxruntime / openvino: --model is a file "
                        "written by igd-fast export (.onnx / .xml, with its <name>.json beside it)")
    add_recipe_flags(p)
    add_runtime(p, scoring=True)
    add_engine_flags(p)


@dataclass
class Progress:
    """Images scored so far by this rank (named in the message of a run stopped early)."""

    done: int = 0


@dataclass
class Decision:
    """What the rows are decided with: the post-processor and the calibration record it came
    from ({} when there is none: a --threshold without a calibration)."""

    post: PostProcessor
    calib: dict


def _calibrate(scorer, args, proc: _dist.ProcessInfo) -> tuple[Decision | None, str | None]:
    """(the decision, or None and why not). Rank 0 calibrates and caches; the others receive
    its record (no second pass over the validation images). With --threshold the calibration
    is still used, when it can be had, for pred_score's scale and the pixel threshold."""
    result: tuple[dict, str | None] | None = None
    if proc.is_main:
        try:
            result = (scorer.calibration(args.workers), None)
        except (OSError, ValueError, KeyError) as e:
            result = ({}, f"cannot calibrate a threshold: {e}; pass --threshold")
    calib, err = _dist.broadcast_object(result)
    if calib:
        scorer.use_calibration(calib)
    if args.threshold is None:
        return (None, err) if err else (Decision(scorer.post_processor, calib), None)
    if not calib and scorer.needs_calibration:
        return None, f"{err}; the recipe's {', '.join(scorer.module.missing_statistics())} need it even then"
    post = scorer.post_processor.with_threshold(args.threshold, GIVEN_RULE) if calib else PostProcessor.given(
        args.threshold, GIVEN_RULE)  # fmt: skip
    return Decision(post, calib), None


def _open(args: argparse.Namespace, proc: _dist.ProcessInfo):
    """The Scorer, after every check that can fail before scoring starts."""
    from .._dist import resolve_device
    from ..checkpoint import CheckpointError
    from ..score import Scorer
    from ..score.threshold import DEFAULT_ALPHA

    check_device_backend(args)
    if args.runtime != "torch":
        return _open_exported(args)
    recipe = resolve_recipe(args)
    check_precision(recipe["precision"], args.device)
    try:
        return Scorer(args.model, device=resolve_device(args.device, proc.local_rank), recipe=recipe,
                      batch_size=args.batch_size, backend=args.backend,
                      alpha=DEFAULT_ALPHA if args.alpha is None else args.alpha, compile=args.compile)  # fmt: skip
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        raise UsageError(f"--model {args.model}: {e}") from None


def _open_exported(args: argparse.Namespace):
    import importlib.util

    from ..export.runtime import ExportedScorer

    if args.alpha is not None:
        raise UsageError("--alpha recalibrates on the model directory's validation images; an exported model "
                         "carries its calibration (re-export, or pass --threshold)")  # fmt: skip
    given = [f"--{k.replace('_', '-')}" for k in given_options(args)] + (["--preset"] if args.preset else [])
    if given:
        raise UsageError(f"{', '.join(given)}: an exported model computes the recipe it was exported with (in its "
                         "side-car .json); re-export with these flags, or use a model directory")  # fmt: skip
    if args.compile:
        raise UsageError("--compile: an exported model runs in its runtime's own graph; use a model directory")
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


def image_outputs(args, out: Path, base: Path) -> ImageOutputs:
    """The per-image files the flags ask for."""
    return ImageOutputs(out, base, not args.no_overlays, args.save_maps, args.save_masks, args.save_tiff)


def _score_mine(scorer, args, paths: list[Path], proc: _dist.ProcessInfo, out: Path,
                decision: Decision, progress: Progress) -> tuple[list, list, dict]:  # fmt: skip
    """Score this rank's share of ``paths``, writing overlays / maps / masks / TIFFs as they come;
    (rows, failures, the results page's thumbnails by input index)."""
    from tqdm import tqdm

    files = image_outputs(args, out, _base(args.input, paths))
    mine = list(range(proc.rank, len(paths), proc.world))
    rows, failed, thumbs = [], [], {}
    desc = "scoring" if proc.world == 1 else f"scoring (rank 0's shard of {proc.world})"
    bar = tqdm(total=len(mine), desc=desc, unit="img", disable=not proc.is_main or args.no_progress, file=sys.stderr)
    for r in scorer.score_paths([paths[i] for i in mine], args.workers, want_maps=True, indices=mine):
        bar.update(1)
        seen = partial(_add_thumbs, args, thumbs, r.index, files, decision.post.map_range) if args.html else None
        row, failure = report(r, decision.post, files, seen=seen)
        if row is not None:
            progress.done += 1
            rows.append(row)
        if failure is not None:
            failed.append(failure)
    bar.close()
    return rows, failed, thumbs


def _add_thumbs(args, thumbs: dict, index: int, files: ImageOutputs, vrange, p) -> None:
    """The results page's pictures of one image, linked to its full-size overlay when written."""
    from ..report_page import make_thumbs

    t = make_thumbs(p.path, p.anomaly_map, vrange, p.pred_mask)
    if t is not None and p.anomaly_map is not None and not args.no_overlays:
        t.link = f"overlays/{output_name(Path(p.path), files.base)}.png"
    thumbs[index] = t


def _write_rows(out: Path, rows: list[dict], jsonl: bool) -> None:
    f = io.StringIO(newline="")
    w = csv.writer(f)
    w.writerow(CSV_COLUMNS)
    for r in rows:
        # pred_score with 9 digits: values near 1 stay distinct
        w.writerow([r["path"], f"{r['score']:.6f}", f"{r['pred_score']:.9f}", r["pred_label"],
                    f"{r['s_global']:.6f}", f"{r['s_local']:.6f}"])  # fmt: skip
    write_text(out / "scores.csv", f.getvalue())
    if jsonl:
        write_text(out / "scores.jsonl", "".join(strict_json({k: v for k, v in r.items() if k != "index"}) + "\n"
                                                 for r in rows))  # fmt: skip


def _summary(args, scorer, rows: list, failed: list, n_inputs: int, decision: Decision, parts: list) -> dict:
    calib, post = decision.calib, decision.post
    wall_max = max(p["wall"] for p in parts)
    engine = parts[0].get("engine")  # --engine ray: resumed images are not counted in its speed
    ips = engine["images_per_second"] if engine else len(rows) / wall_max if wall_max > 0 else 0.0
    return {
        "model": str(Path(args.model).resolve()), "models": list(scorer.kinds), "input": str(args.input),
        "n_inputs": n_inputs, "n_scored": len(rows), "n_skipped": len({f["path"] for f in failed}),
        "n_anomalous": sum(r["pred_label"] for r in rows),
        "skipped": [{"path": f["path"], "error": f["error"]} for f in failed],
        "threshold": post.threshold, "threshold_rule": post.rule, "alpha": calib.get("alpha"),
        "n_validation": calib.get("n_validation"), "score_scale": post.scale,
        "normalisation": calib.get("normalisation", NORMALISATION), "pixel_threshold": post.pixel_threshold,
        "pixel_rule": calib.get("pixel_rule"), "decision": decision_record(calib), "scoring": scorer.scoring,
        "recipe": scorer.recipe.record(),
        "precision": scorer.precision_record, "compiled": scorer.compiled, "world_size": len(parts),
        "device": str(scorer.device), "backend": args.backend, "workers": args.workers, "wall_seconds": wall_max,
        "engine": engine or {"name": "local"}, "images_per_second": ips,
        "images_per_second_scoring_per_rank": [p["ips"] for p in parts],
        "exit_code": EXIT_SKIPPED if failed else EXIT_OK,
    }  # fmt: skip


def _write(out: Path, args, scorer, parts: list[dict], n_inputs: int, decision: Decision) -> int:
    rows = sorted((row for p in parts for row in p["rows"]), key=lambda row: row["index"])
    failed = sorted((f for p in parts for f in p["failed"]), key=lambda f: f["index"])
    _write_rows(out, rows, args.jsonl)
    summary = _summary(args, scorer, rows, failed, n_inputs, decision, parts)
    write_json(out / "summary.json", summary)
    if args.html:
        _write_page(out, summary, rows, {i: t for p in parts for i, t in p["thumbs"].items()}, args)
    print(
        f"scored {len(rows)}/{n_inputs} images ({summary['images_per_second']:.1f} img/s), "
        f"{summary['n_anomalous']} above threshold {decision.post.threshold:.6g}; "
        f"{summary['n_skipped']} skipped -> {out / 'scores.csv'}",
        file=sys.stderr,
    )
    for f in failed:
        print(f"  skipped {f['path']}: {f['error']}", file=sys.stderr)
    return summary["exit_code"]


def _write_page(out: Path, summary: dict, rows: list[dict], thumbs: dict, args) -> None:
    from ..report_page import PAGE_NAME, score_page

    base = str(_base(args.input, [Path(r["path"]) for r in rows])) if rows else None
    write_text(out / PAGE_NAME, score_page(summary, rows, thumbs, base))
    print(f"results page: {out / PAGE_NAME}", file=sys.stderr)


def _check_inputs(args, paths: list[Path]) -> str | None:
    """Why the inputs cannot be scored as asked, or None."""
    if not paths:
        return f"no image files match {args.input}"
    if not args.save_tiff:
        return None
    outside = [p for p in paths if tiff_name(p) is None]
    if outside:
        more = f" (and {len(outside) - 1} more)" if len(outside) > 1 else ""
        return (f"--save-tiff needs inputs in the MVTec layout .../<category>/test/<defect>/<id>.png; "
                f"{outside[0]} is not{more}")  # fmt: skip
    seen: dict[str, Path] = {}
    for p in paths:
        other = seen.setdefault(tiff_name(p), p)
        if other != p:  # the evaluators' layout drops the extension: a.png and a.jpg collide
            return f"--save-tiff: {other} and {p} would both be written to {tiff_name(p)}"
    return None


def _prepare(args, proc: _dist.ProcessInfo):
    """(scorer, decision) or an error message."""
    try:
        check_engine(args, proc.world)
        scorer = _open(args, proc)
    except UsageError as e:
        return None, None, str(e)
    decision, err = _calibrate(scorer, args, proc)
    if err is not None:
        return None, None, err
    if args.save_masks and decision.post.pixel_threshold is None:
        return None, None, ("--save-masks needs the calibrated pixel threshold, and the calibration failed "
                            "(run.json lists no readable validation images)")  # fmt: skip
    return scorer, decision, None


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
    why = _check_inputs(args, paths)
    if why is not None:
        print(f"igd-fast score: error: {why}", file=sys.stderr)
        return EXIT_USAGE
    proc = _dist.init()
    out = Path(args.out)
    progress = Progress()
    try:
        check_out_dir(out)
        # one run per output folder: a second one would interleave its files with ours
        with output_lock(out) if proc.is_main else contextlib.nullcontext():
            return _run_locked(args, paths, proc, out, progress)
    except (UsageError, FolderInUse) as e:
        if proc.is_main:
            print(f"igd-fast score: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OutputError as e:
        print(f"igd-fast score: error: {e}; stopped after {progress.done} of {len(paths)} images "
              f"(every file written to {out} is complete; free space and rerun)", file=sys.stderr)  # fmt: skip
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"igd-fast score: interrupted after {progress.done} of {len(paths)} images; every file "
              f"written to {out} is complete, scores.csv and summary.json were not written by this run; rerun to "
              "score all", file=sys.stderr)  # fmt: skip
        return EXIT_USAGE
    finally:
        _dist.close()


def _run_locked(args: argparse.Namespace, paths: list[Path], proc: _dist.ProcessInfo, out: Path,
                progress: Progress) -> int:  # fmt: skip
    scorer, decision, err = _prepare(args, proc)
    if err is not None:
        if proc.is_main:
            print(f"igd-fast score: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    if args.engine == "ray":
        from .score_ray import score_on_ray

        files = image_outputs(args, out, _base(args.input, paths))
        part = score_on_ray(args, scorer, decision.post, decision.calib, paths, files, progress)
        return _write(out, args, scorer, [part], len(paths), decision)
    t0 = time.perf_counter()
    rows, failed, thumbs = _score_mine(scorer, args, paths, proc, out, decision, progress)
    part = {"rows": rows, "failed": failed, "wall": time.perf_counter() - t0, "ips": scorer.images_per_second,
            "thumbs": thumbs}
    parts = _dist.gather_objects(part)
    code = _write(out, args, scorer, parts, len(paths), decision) if proc.is_main else EXIT_OK
    return int(_dist.broadcast_object(code))
