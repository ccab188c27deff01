"""Is an image AUROC lost to the defects or to the test normals? Scores a model directory's
validation normals (from ``run.json``), the test normals and each defect type with the
model's own recipe (``Scorer``), and prints the image AUROC of each defect type against the
test normals (what ``eval`` reports per defect) and against the validation normals (normals
drawn like the training images), and of the test normals against the validation normals
(0.5: alike; ``eval``'s ``test_normals_check`` tests the same). ``--figure PNG`` draws the
highest-scoring test normals and two validation normals with their heat-maps.

    python benchmarks/quality/normals_vs_defects.py MODEL ROOT CATEGORY [--figure PNG]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from igd_fast import Scorer
from igd_fast.metrics import auroc


def _auroc(neg: np.ndarray, pos: np.ndarray) -> float:
    return auroc(np.r_[neg, pos], np.r_[np.zeros(len(neg)), np.ones(len(pos))])


def _figure(path: Path, test: list, val: list, n: int = 4) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    top = sorted(test, key=lambda t: -t[1].score)[:n] + val[:2]
    lo = min(float(np.asarray(p.anomaly_map).min()) for _, p in top)
    hi = max(float(np.asarray(p.anomaly_map).max()) for _, p in top)
    fig, ax = plt.subplots(2, len(top), figsize=(3 * len(top), 6))
    for j, (file, p) in enumerate(top):
        kind = "test good" if j < min(n, len(test)) else "validation"
        ax[0, j].imshow(Image.open(file).convert("RGB"))
        ax[0, j].set_title(f"{kind} {file.stem}: score {p.score:.2f}", fontsize=9)
        ax[1, j].imshow(p.anomaly_map, vmin=lo, vmax=hi)
    for a in ax.flat:
        a.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("root", type=Path)
    ap.add_argument("category")
    ap.add_argument("--figure", type=Path, default=None)
    a = ap.parse_args()
    run = json.loads((a.model / "run.json").read_text())
    test = a.root / a.category / "test"
    groups = {"validation normals": [Path(run["data_root"]) / run["category"] / f for f in run["val_files"]],
              "test normals": sorted((test / "good").glob("*.png"))}  # fmt: skip
    for d in sorted(p for p in test.iterdir() if p.is_dir() and p.name != "good"):
        groups[d.name] = sorted(d.glob("*.png"))
    scorer = Scorer(str(a.model))
    preds = {g: scorer.predict([str(p) for p in files]) for g, files in groups.items()}
    scores = {g: np.array([p.score for p in ps]) for g, ps in preds.items()}
    val, good = scores["validation normals"], scores["test normals"]
    print(f"{a.model} on {a.category}: test normals against validation normals, AUROC {_auroc(val, good):.3f}")
    print("| scores | n | median | image AUROC against the test normals | against the validation normals |")
    print("|---|---|---|---|---|")
    for g, s in scores.items():
        vs = ("", "") if "normals" in g else (f"{_auroc(good, s):.3f}", f"{_auroc(val, s):.3f}")
        print(f"| {g} | {len(s)} | {np.median(s):.2f} | {vs[0]} | {vs[1]} |")
    if a.figure:
        _figure(a.figure, list(zip(groups["test normals"], preds["test normals"], strict=True)),
                list(zip(groups["validation normals"], preds["validation normals"], strict=True)))  # fmt: skip


if __name__ == "__main__":
    main()
