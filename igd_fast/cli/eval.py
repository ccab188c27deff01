"""``igd-fast eval``: evaluate a trained model on the test split of an MVTec-layout category.

Writes ``report.json`` — metrics under anomalib's names: ``image_AUROC``,
``image_F1Score`` (at the calibrated threshold), ``image_F1Max``, ``pixel_AUROC``
(pooled over all test pixels), ``pixel_AUPRO`` (up to 30 % FPR, divided by 0.3),
``pixel_F1Max`` (pooled), ``pixel_F1Score`` (at the calibrated pixel threshold); the
IGD paper's mean per-anomalous-image pixel AUROC as
``pixel_AUROC_per_anomalous_image_mean`` (not anomalib's pixel_AUROC); ``accuracy``
at the threshold; counts, thresholds, images/s, and per image ``score`` (raw),
``pred_score`` (0.5 = threshold), ``pred_label``; the scoring recipe with each value's
source (model, preset, flag or default) — and ``report.png`` (image ROC curve and
the best / worst examples with their heat-maps) to ``--output``
(default ``<model>/eval_<category>``); with ``--html`` also ``report.html``, the results
page (igd_fast.report_page). Pixel metrics use each image's map at its
original resolution against its mask; a mask of another size than its image is an
error (exit 2, before anything is scored). Test images are listed recursively below
test/<defect>/ (the package's one listing rule). Unreadable test images are skipped
and listed (exit code 3), as in ``igd-fast score``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from ..outputs import FolderInUse, atomic_write_bytes, inside, output_lock, plain_name, write_json, write_text
from ..score.decide import check_test_normals, decision_record
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
    positive_int,
)
from .recipe_flags import add_recipe_flags, resolve_recipe


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = (
        "exit codes: 0 ok; 2 bad arguments, data layout or no threshold; 3 some test images could not be read\n\n"
    ) + examples(
        "igd-fast eval --model models/bottle --data /data/mvtec --category bottle",
        "igd-fast eval --model models/bottle --data /data/mvtec --category bottle --out reports/bottle --save-tiff",
        "igd-fast eval --model models/bottle --data /data/mvtec_loco --category juice_bottle   # LOCO: same flags",
        "igd-fast eval --model models/parts --normal-dir good/ --abnormal-dir bad/ --mask-dir masks/ "
        "--normal-test-dir good_test/ --out reports/parts",
    )
    p.add_argument("--model", required=True, metavar="DIR",
                   help="trained model directory (global.pt, local.pt and/or defect.pt, run.json)")
    p.add_argument("--data", metavar="ROOT",
                   help="MVTec AD or MVTec LOCO root (holds <category>/test, ground_truth)")
    p.add_argument("--category", metavar="NAME",
                   help="category folder under ROOT (with --normal-dir: the name used in outputs, default 'folder')")
    g = p.add_argument_group("Folder layout (anomalib's Folder; instead of --data)")
    g.add_argument("--normal-dir", metavar="DIR", help="normal images (without --normal-test-dir a deterministic "
                   "20 %% of them is the normal test part)")  # fmt: skip
    g.add_argument("--abnormal-dir", metavar="DIR", help="anomalous test images")
    g.add_argument("--mask-dir", metavar="DIR",
                   help="their masks: same relative path, or same name with .png, or <stem>_mask.png")
    g.add_argument("--normal-test-dir", metavar="DIR", help="normal test images")
    add_out(p, False, "report folder (default: <model>/eval_<category>)")
    p.add_argument("--examples", type=positive_int, default=4, help="examples per row of the figure (default 4)")
    p.add_argument("--save-tiff", action="store_true",
                   help="write each test map as a float32 TIFF at the image's size to "
                        "OUT/<category>/test/<defect>/<id>.tiff (the MVTec AD / LOCO evaluators' layout)")
    p.add_argument("--save-masks", action="store_true",
                   help="write each pred_mask (map > calibrated pixel threshold) as a 0/255 PNG to "
                        "OUT/masks/<defect>/<id>.png")
    p.add_argument("--html", action="store_true",
                   help="also write OUT/report.html: one self-contained page (metrics, ROC, thresholds, every "
                        "image's thumbnail, heat-map and mask outlines, sortable and filterable)")
    add_recipe_flags(p)
    add_runtime(p, scoring=True)


def _safe(fn, *a) -> tuple[float | None, str | None]:
    """A metric, or (None, why) when the data cannot define it (e.g. one class only)."""
    try:
        return float(fn(*a)), None
    except ValueError as e:
        return None, str(e)


# report.json metric names are anomalib's, so results drop into its users' tables
IMAGE_METRICS = ("image_AUROC", "image_F1Score", "image_F1Max")
PIXEL_METRICS = ("pixel_AUROC", "pixel_AUPRO", "pixel_F1Max", "pixel_F1Score", "pixel_AUROC_per_anomalous_image_mean")
SUMMARY_KEYS = ("image_AUROC", "image_F1Score", "image_F1Max", "pixel_AUROC", "pixel_AUPRO", "pixel_F1Max",
                "pixel_AUROC_per_anomalous_image_mean", "accuracy")  # fmt: skip


def compute_report(
    results: list[dict], maps: list[np.ndarray], masks: list[np.ndarray], threshold: float,
    pixel_threshold: float | None = None, has_masks: bool = True,
) -> dict:  # fmt: skip
    """The metrics of a scored test split (``results`` rows with score and label).

    image_F1Score is at ``threshold`` (score > threshold), pixel_F1Score at
    ``pixel_threshold`` (map > pixel_threshold; left out when None); the F1Max values
    are the best over all thresholds, their thresholds reported under ``f1max_thresholds``.
    ``has_masks`` False (a Folder layout without --mask-dir): no pixel metrics.
    """
    scores = [r["score"] for r in results]
    labels = [r["label"] for r in results]
    no_map = any(m is None for m in maps)
    rep: dict = {"n_test": len(results), "n_normal": labels.count(0), "n_anomalous": labels.count(1)}
    notes, best_at = {}, {}
    for key, fn, args in _metrics(scores, labels, maps, masks, threshold, pixel_threshold, best_at):
        if no_map and key.startswith("pixel"):
            rep[key], why = None, "this model has no per-pixel map (Deep SVDD variant)"
        elif not has_masks and key.startswith("pixel"):
            rep[key], why = None, "no ground-truth masks (Folder layout without --mask-dir)"
        else:
            rep[key], why = _safe(fn, *args) if results else (None, "no images")
        if why:
            notes[key] = why
    rep["f1max_thresholds"] = best_at
    rep["n_true_positive"] = sum(1 for s, y in zip(scores, labels, strict=True) if y == 1 and s > threshold)
    rep["n_false_positive"] = sum(1 for s, y in zip(scores, labels, strict=True) if y == 0 and s > threshold)
    rep["per_defect"] = _per_defect(results)
    if notes:
        rep["undefined"] = notes
    return rep


def _metrics(scores, labels, maps, masks, threshold: float, pixel_threshold: float | None, best_at: dict) -> list:
    """(report key, metric function, its arguments) in report order; F1Max thresholds go to ``best_at``."""
    from ..metrics import accuracy, aupro, auroc, f1_max, f1_score, per_image_pixel_auroc, pixel_auroc, pixel_f1_max

    def pooled_f1(m, k):
        pairs = [(a.reshape(-1), b.reshape(-1)) for a, b in zip(m, k, strict=True)]
        return f1_score(np.concatenate([a for a, _ in pairs]), np.concatenate([b for _, b in pairs]), pixel_threshold)

    def keep_best(name, fn):
        def run(*a):
            v, t = fn(*a)
            best_at[name] = t
            return v

        return run

    metrics = [
        ("image_AUROC", auroc, (scores, labels)),
        ("image_F1Score", lambda s, y: f1_score(s, y, threshold), (scores, labels)),
        ("image_F1Max", keep_best("image", f1_max), (scores, labels)),
        ("accuracy", lambda s, y: accuracy(s, y, threshold), (scores, labels)),
        ("pixel_AUROC", pixel_auroc, (maps, masks)),
        ("pixel_AUPRO", aupro, (maps, masks)),  # FPR limit 0.3, divided by 0.3
        ("pixel_F1Max", keep_best("pixel", pixel_f1_max), (maps, masks)),
        ("pixel_AUROC_per_anomalous_image_mean", per_image_pixel_auroc, (maps, masks)),
    ]
    if pixel_threshold is not None:
        metrics.insert(7, ("pixel_F1Score", pooled_f1, (maps, masks)))
    return metrics


def _per_defect(results: list[dict]) -> dict:
    from ..metrics import auroc

    out = {}
    normals = [r["score"] for r in results if r["label"] == 0]
    for d in sorted({r["defect"] for r in results if r["label"] == 1}):
        ds = [r["score"] for r in results if r["defect"] == d]
        out[d] = {"n": len(ds)}
        if normals:
            out[d]["image_AUROC_vs_good"] = auroc(normals + ds, [0] * len(normals) + [1] * len(ds))
    return out


def write_figure(
    path: Path, results: list[dict], maps: list, masks: list, threshold: float, vrange, k: int, title: str,
    validation: list[float] | None = None,
) -> None:
    """ROC curve + rows of examples: best-detected anomalies, missed anomalies, false alarms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..metrics import roc_curve
    from ..score.io import overlay, read_rgb

    anomalies = sorted((i for i, r in enumerate(results) if r["label"] == 1), key=lambda i: -results[i]["score"])
    normals = sorted((i for i, r in enumerate(results) if r["label"] == 0), key=lambda i: -results[i]["score"])
    rows = [
        ("highest-scoring anomalies", anomalies[:k]),
        ("lowest-scoring anomalies", anomalies[::-1][:k]),
        ("highest-scoring normals", normals[:k]),
    ]
    rows = [(name, idx) for name, idx in rows if idx]
    ncol = max(k, 1)
    fig = plt.figure(figsize=(3.0 * (ncol + 1.3), 3.0 * max(len(rows), 1) + 0.6), constrained_layout=True)
    gs = fig.add_gridspec(max(len(rows), 1), ncol + 1, width_ratios=[1.3] + [1] * ncol)
    left = gs[:, 0].subgridspec(2, 1)
    ax = fig.add_subplot(left[0])
    try:
        fpr, tpr, _ = roc_curve([r["score"] for r in results], [r["label"] for r in results])
        ax.plot(fpr.numpy(), tpr.numpy(), lw=2)
    except ValueError:
        ax.text(0.5, 0.5, "ROC undefined\n(one class only)", ha="center")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="image ROC", aspect="equal")
    _score_histogram(fig.add_subplot(left[1]), results, threshold, validation or [])
    for row, (name, idx) in enumerate(rows):
        for col in range(ncol):
            a = fig.add_subplot(gs[row, col + 1])
            a.axis("off")
            if col >= len(idx):
                continue
            i = idx[col]
            a.imshow(overlay(read_rgb(results[i]["path"]), maps[i], *vrange))
            if masks[i].any():
                a.contour(masks[i].astype(float), levels=[0.5], colors="white", linewidths=1.0)
            flag = "anomalous" if results[i]["score"] > threshold else "normal"
            a.set_title(
                f"{results[i]['defect']} {Path(results[i]['path']).name}\ns={results[i]['score']:.4g} -> {flag}",
                fontsize=8,
            )
            if col == 0:
                a.text(-0.05, 0.5, name, transform=a.transAxes, rotation=90, ha="right", va="center", fontsize=9)
    fig.suptitle(title)
    try:
        atomic_write_bytes(path, lambda f: fig.savefig(f, dpi=90, format="png"), durable=False)
    finally:
        plt.close(fig)


def _score_histogram(ax, results: list[dict], threshold: float, validation: list[float]) -> None:
    """The test scores of normals and anomalies and the validation normals' (the threshold's
    evidence: test normals far right of them are a shift, test_normals_check), with the threshold."""
    scores = np.array([r["score"] for r in results], dtype=np.float64)
    labels = np.array([r["label"] for r in results])
    bins = np.histogram_bin_edges(np.r_[scores, validation, threshold], bins=30)
    for lab, name, colour in ((0, "test normal", "tab:blue"), (1, "test anomalous", "tab:red")):
        if (labels == lab).any():
            ax.hist(scores[labels == lab], bins=bins, alpha=0.6, color=colour, label=name)
    if validation:
        ax.hist(validation, bins=bins, histtype="step", lw=1.5, color="tab:green", label="validation normal")
    ax.axvline(threshold, color="k", ls="--", lw=1.2, label="threshold")
    ax.set(xlabel="score", ylabel="images", title="scores and threshold")
    ax.legend(fontsize=7)


def _prepare(args: argparse.Namespace):
    """(samples, layout, out folder, scorer) after every check that can fail before scoring."""
    from ..checkpoint import CheckpointError
    from ..data import DataLayoutError, mask_size_mismatches, resolve_layout
    from ..score import Scorer

    check_device_backend(args)
    if args.category is not None:  # a folder name in the outputs' paths: never a path out of --out
        try:
            args.category = plain_name(args.category, "--category")
        except ValueError as e:
            raise UsageError(str(e)) from None
    recipe = resolve_recipe(args)
    check_precision(recipe["precision"], args.device)
    try:
        layout = resolve_layout(args.data, args.category, args.normal_dir, args.abnormal_dir, args.mask_dir,
                                args.normal_test_dir)  # fmt: skip
        samples = layout.test_samples()
    except DataLayoutError as e:
        raise UsageError(str(e)) from None
    bad = mask_size_mismatches(samples)
    if bad:
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise UsageError("masks must have their image's size: " + "; ".join(bad[:5]) + more)
    out = check_out_dir(args.out or Path(args.model) / f"eval_{layout.name}")
    try:
        scorer = Scorer(args.model, device=args.device, recipe=recipe, batch_size=args.batch_size,
                        backend=args.backend, compile=args.compile)  # fmt: skip
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        raise UsageError(f"--model {args.model}: {e}") from None
    return samples, layout, out, scorer


def sample_id(sample) -> str:
    """The image's path below its defect folder without the extension ('000', 'sub/000'):
    the id the MVTec evaluators look up."""
    return str(Path(sample.rel or sample.path.name).with_suffix("").as_posix())


def _score_test(scorer, samples, args, out: Path, category: str):
    from tqdm import tqdm

    from ..data import image_size_of, load_mask
    from ..report_page import make_thumbs
    from ..score import Failure

    post = scorer.post_processor
    results, maps, masks, skipped, thumbs = [], [], [], [], []
    bar = tqdm(total=len(samples), desc=f"eval {category}", unit="img", disable=args.no_progress)
    for r in scorer.score_paths([s.path for s in samples], args.workers, want_maps=True, progress=bar):
        s = samples[r.index]
        if isinstance(r, Failure):
            skipped.append({"path": r.path, "error": r.error})
            continue
        if not math.isfinite(r.score) or (r.map is not None and not np.isfinite(r.map).all()):
            # NaN is never "normal": an error for this image, never label 0
            skipped.append({"path": r.path, "error": "the model's score or map for this image is not finite (NaN/inf)"})
            continue
        try:
            mask = load_mask(s.mask, r.map.shape if r.map is not None else image_size_of(r.path))[0].numpy() > 0.5
        except ValueError as e:  # a corrupt mask: skip the image, like a corrupt image
            skipped.append({"path": str(s.mask), "error": str(e)})
            continue
        p = post.predict(r)
        row = {"path": r.path, "defect": s.defect, "label": s.label, "score": r.score, "pred_score": p.pred_score,
               "pred_label": p.pred_label, "s_global": r.s_global, "s_local": r.s_local}  # fmt: skip
        if r.map is not None:
            _write_map_files(args, out, f"{s.defect}/{sample_id(s)}", category, row, p)
        if args.html:
            thumbs.append(make_thumbs(r.path, r.map, post.map_range, p.pred_mask, mask if mask.any() else None))
        results.append(row)
        maps.append(r.map)
        masks.append(mask)
    bar.close()
    return results, maps, masks, skipped, thumbs


def _write_map_files(args, out: Path, name: str, category: str, row: dict, p) -> None:
    from ..score.io import save_mask, save_tiff

    if args.save_tiff:
        f = inside(out, category, "test", f"{name}.tiff")
        save_tiff(f, p.anomaly_map)
        row["anomaly_map"] = str(f)
    if args.save_masks:
        f = inside(out, "masks", f"{name}.png")
        save_mask(f, p.pred_mask)
        row["pred_mask"] = str(f)


def _report(args, scorer, layout, rep: dict, calib: dict, results: list, skipped: list, seconds: dict) -> dict:
    post = scorer.post_processor
    wall = seconds["test_scoring"]
    validation = list((calib.get("validation_scores") or {}).values())  # the threshold's evidence
    return {
        "category": layout.name, "layout": layout.kind, "data_root": str(layout.root.resolve()),
        "model": str(Path(args.model).resolve()), "models": list(scorer.kinds), **rep,
        "threshold": post.threshold, "threshold_rule": calib.get("rule"), "alpha": calib.get("alpha"),
        "n_validation": calib.get("n_validation"), "score_scale": calib.get("score_scale"),
        "normalisation": calib.get("normalisation"),
        "pixel_threshold": post.pixel_threshold if calib.get("has_maps", True) else None,
        "pixel_rule": calib.get("pixel_rule"), "decision": decision_record(calib),
        "test_normals_check": _normals_check(results, calib, post.threshold, validation),
        "validation_scores": validation, "scoring": scorer.scoring,
        "recipe": scorer.recipe.record(), "precision": scorer.precision_record, "compiled": scorer.compiled,
        "n_skipped": len(skipped),
        "skipped": skipped, "images_per_second": len(results) / wall if wall > 0 else 0.0,
        "images_per_second_scoring": scorer.images_per_second, "seconds": seconds, "device": str(scorer.device),
        "backend": args.backend, "images": results,
    }  # fmt: skip


def _normals_check(results: list, calib: dict, threshold: float, validation: list[float]) -> dict | None:
    """The image rule's promise on the test normals (None under an explicit --threshold: no promise)."""
    if calib.get("threshold") != threshold:
        return None
    normal = [r["score"] for r in results if r["label"] == 0]
    return check_test_normals(normal, validation, threshold, calib.get("alpha", 0.05), calib.get("guaranteed_fpr"))


def _warn_shift(check: dict | None) -> None:
    if check and check["verdict"] == "shifted":
        promised = check["promised_fpr"]
        print(f"igd-fast eval: warning: the test normals score above the validation normals the thresholds came "
              f"from (AUROC {_fmt(check['auroc_test_vs_validation_normals'])}, p = {check['p_value']:.2g}): "
              f"{check['flagged']} of {check['test_normals']} are flagged"
              + (f", where the rule promises at most {promised:.3g} of them" if promised is not None else "")
              + "; calibrate on normals from the test conditions (report.json: test_normals_check)",
              file=sys.stderr)  # fmt: skip


def run(args: argparse.Namespace) -> int:
    try:
        samples, layout, out, scorer = _prepare(args)
        # one run per report folder: a second one would interleave its files with ours
        with output_lock(out):
            return _run(args, samples, layout, out, scorer)
    except (UsageError, FolderInUse) as e:
        print(f"igd-fast eval: error: {e}", file=sys.stderr)
        return EXIT_USAGE


def _run(args: argparse.Namespace, samples, layout, out: Path, scorer) -> int:
    t_cal = time.perf_counter()
    try:
        calib = scorer.calibration(args.workers)
    except (OSError, ValueError, KeyError) as e:
        print(f"igd-fast eval: error: cannot calibrate the threshold: {e}", file=sys.stderr)
        return EXIT_USAGE
    seconds = {"calibration": time.perf_counter() - t_cal}
    scorer.reset_throughput()  # throughput of the test pass only
    t0 = time.perf_counter()
    results, maps, masks, skipped, thumbs = _score_test(scorer, samples, args, out, layout.name)
    seconds["test_scoring"] = time.perf_counter() - t0
    t_m = time.perf_counter()
    threshold = scorer.post_processor.threshold
    pix_t = scorer.post_processor.pixel_threshold if calib.get("has_maps", True) else None
    rep = compute_report(results, maps, masks, threshold, pix_t, layout.has_masks)
    seconds["metrics"] = time.perf_counter() - t_m
    report = _report(args, scorer, layout, rep, calib, results, skipped, seconds)
    write_json(out / "report.json", report)
    if results and all(m is not None for m in maps):
        title = (f"{layout.name}: image AUROC {_fmt(rep['image_AUROC'])}, pixel AUROC {_fmt(rep['pixel_AUROC'])}, "
                 f"AUPRO@0.3 {_fmt(rep['pixel_AUPRO'])}")  # fmt: skip
        write_figure(out / "report.png", results, maps, masks, threshold, scorer.map_range(), args.examples, title,
                     report["validation_scores"])  # fmt: skip
    print(json.dumps({k: report[k] for k in SUMMARY_KEYS}, indent=2))
    print(f"report: {out / 'report.json'}  figure: {out / 'report.png'}", file=sys.stderr)
    _warn_shift(report["test_normals_check"])
    if args.html:
        _write_page(out, report, thumbs)
    for s in skipped:
        print(f"  skipped {s['path']}: {s['error']}", file=sys.stderr)
    return EXIT_SKIPPED if skipped else EXIT_OK


def _write_page(out: Path, report: dict, thumbs: list) -> None:
    from ..report_page import PAGE_NAME, eval_page

    write_text(out / PAGE_NAME, eval_page(report, thumbs, IMAGE_METRICS + ("accuracy",) + PIXEL_METRICS))
    print(f"results page: {out / PAGE_NAME}", file=sys.stderr)


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"
