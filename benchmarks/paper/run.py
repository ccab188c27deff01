"""The paper's MNIST tables on our protocol: every (variant, train fraction,
contamination) cell runs ``igd-fast protocol mnist`` (one class per call, so a shared
machine can interleave other work between classes; the protocol resumes), then the
variants with a Gaussian term are rescored with ``--latent-weight 0`` (l_r alone) from
the same trained models. Writes ``OUT/summary.json`` and prints Markdown tables.

    python benchmarks/paper/run.py --data ../shared/data/mnist --out runs/paper \
        --cells igd:1:0 rec:1:0 dsvdd:0.2:0 igd:1:0.1 -- --epochs 60 --batch-size 16 --latent 32

Everything after ``--`` goes to every ``igd-fast protocol`` call (the recipe). With
``--lock FILE`` each class holds an exclusive flock on FILE while it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import subprocess
import sys
import time
from pathlib import Path

from igd_fast.metrics import auroc
from igd_fast.protocol.scoring import score_test_split

LATENT_VARIANTS = ("igd", "rec-gac", "dsvdd-rec")  # a latent term next to l_r: also scored by l_r alone


def cell_name(variant: str, fraction: float, contamination: float) -> str:
    return f"{variant}_f{fraction:g}_c{contamination:g}"


@contextlib.contextmanager
def locked(path: str | None):
    if path is None:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_cell(args, variant: str, fraction: float, contamination: float, recipe: list[str]) -> dict:
    out = Path(args.out) / cell_name(variant, fraction, contamination)
    base = [sys.executable, "-m", "igd_fast", "protocol", "mnist", "--data", args.data, "--out", str(out),
            "--variant", variant, "--train-fraction", str(fraction), "--contamination", str(contamination),
            "--seed", str(args.seed), "--no-progress", *recipe]  # fmt: skip
    for k in args.classes:
        with locked(args.lock):
            subprocess.run([*base, "--normal-class", str(k)], check=True)
    if args.classes == list(range(10)):
        subprocess.run([*base, "--normal-class", "all"], check=True)  # all resumed: writes the 10-class mean
    res = json.loads((out / "results.json").read_text())
    row = {
        "variant": variant,
        "train_fraction": fraction,
        "contamination": contamination,
        "per_class": {k: v["image_AUROC"] for k, v in res["classes"].items()},
        "mean": res["mean_image_AUROC"],
        "seconds": res["total_seconds"],
    }
    if variant in LATENT_VARIANTS:
        lr_only = {}
        for k in res["classes"]:
            cdir = out / k
            with locked(args.lock):
                rows = score_test_split(cdir / "model", cdir / "data", f"class_{k}", "cpu", latent_weight=0.0)
            lr_only[k] = auroc([r["score"] for r in rows], [r["label"] for r in rows])
        row["per_class_lr_only"] = lr_only
        row["mean_lr_only"] = sum(lr_only.values()) / len(lr_only)
    return row


def markdown(rows: list[dict]) -> str:
    classes = sorted({k for r in rows for k in r["per_class"]}, key=int)
    head = "| variant | fraction | contamination | score | " + " | ".join(classes) + " | mean | seconds |"
    lines = [head, "|" + "---|" * (len(classes) + 6)]
    for r in rows:
        for label, per, mean in (("paper's", r["per_class"], r["mean"]),
                                 ("l_r only", r.get("per_class_lr_only"), r.get("mean_lr_only"))):  # fmt: skip
            if per is None:
                continue
            cells = " | ".join(f"{per[k]:.4f}" if k in per else "" for k in classes)
            m = f"**{mean:.4f}**" if mean is not None else ""
            secs = f"{r['seconds']:.0f}" if label == "paper's" else ""
            setting = f"{r['variant']} | {r['train_fraction']:g} | {r['contamination']:g}"
            lines.append(f"| {setting} | {label} | {cells} | {m} | {secs} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    argv = sys.argv[1:]
    recipe = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--cells", nargs="+", required=True, metavar="VARIANT:FRACTION:CONTAMINATION")
    ap.add_argument("--classes", type=int, nargs="+", default=list(range(10)))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lock", default=None, help="flock this file around each class (shared machines)")
    args = ap.parse_args(argv)
    summary_path = Path(args.out) / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {"recipe": recipe, "cells": {}}
    if summary["recipe"] != recipe:
        raise SystemExit(f"{summary_path} was made with recipe {summary['recipe']}, not {recipe}; use another --out")
    for spec in args.cells:
        v, f, c = spec.split(":")
        t0 = time.perf_counter()
        row = run_cell(args, v, float(f), float(c), recipe)
        row["wall_seconds"] = time.perf_counter() - t0
        summary["cells"][cell_name(v, float(f), float(c))] = row
        Path(args.out).mkdir(parents=True, exist_ok=True)
        summary_path.write_text(json.dumps(summary, indent=1))
        print(markdown([row]), flush=True)
    print(markdown(list(summary["cells"].values())))


if __name__ == "__main__":
    main()
