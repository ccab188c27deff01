"""How far a category's test normals are from its training normals, with no model: three plain
statistics of each image in grey (mean level, contrast, fine detail: the mean absolute difference
from a Gaussian blur at sigma 4 px) and, per statistic, the AUROC of test/good against train/good
(0.5: the same; 0 or 1: every test normal on one side of every training normal). A model trained
and calibrated on train/good sees such a shift as an anomaly (``igd-fast eval``'s
``test_normals_check`` measures the same thing on the model's own scores).

    python benchmarks/quality/split_shift.py ROOT CATEGORY [CATEGORY ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from igd_fast.metrics import auroc
from igd_fast.reference.ssim import gaussian_filter, gaussian_window

STATS = ("mean grey", "contrast (grey std)", "fine detail (mean abs. of x - blur 4 px)")


def image_stats(path: Path) -> tuple[float, float, float]:
    grey = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
    t = torch.from_numpy(grey)[None, None]
    blur = gaussian_filter(torch.nn.functional.pad(t, (12, 12, 12, 12), mode="reflect"), gaussian_window(25, 4.0))
    return float(grey.mean()), float(grey.std()), float((t - blur).abs().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("categories", nargs="+")
    a = ap.parse_args()
    print("| category | statistic | train/good mean ± sd | test/good mean ± sd | AUROC (test/good > train/good) |")
    print("|---|---|---|---|---|")
    for cat in a.categories:
        tr, te = ([image_stats(f) for f in sorted((a.root / cat / part / "good").glob("*.png"))]
                  for part in ("train", "test"))  # fmt: skip
        tr, te = np.asarray(tr), np.asarray(te)
        for i, name in enumerate(STATS):
            auc = auroc(np.r_[tr[:, i], te[:, i]], np.r_[np.zeros(len(tr)), np.ones(len(te))])
            print(f"| {cat} | {name} | {tr[:, i].mean():.2f} ± {tr[:, i].std():.2f} | "
                  f"{te[:, i].mean():.2f} ± {te[:, i].std():.2f} | {auc:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
