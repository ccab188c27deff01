"""The same images rewritten in the MVTec LOCO and anomalib Folder layouts."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image


def to_loco(cat: Path, root: Path, n_val: int = 3) -> Path:
    """``cat`` (MVTec AD layout) as MVTec LOCO: validation/good holds the last ``n_val``
    training images; each mask is split into two region files 000.png / 001.png (left
    and right halves, values 255 and 254 as LOCO's per-defect codes) whose OR is the mask."""
    dst = root / cat.name
    train = sorted((cat / "train" / "good").glob("*.png"))
    for sub, files in (("train/good", train[:-n_val]), ("validation/good", train[-n_val:])):
        (dst / sub).mkdir(parents=True)
        for f in files:
            shutil.copy(f, dst / sub / f.name)
    shutil.copytree(cat / "test", dst / "test")
    for m in sorted((cat / "ground_truth").rglob("*_mask.png")):
        a = np.asarray(Image.open(m)) > 127
        out = dst / "ground_truth" / m.parent.name / m.name[: -len("_mask.png")]
        out.mkdir(parents=True)
        half = a.shape[1] // 2
        left, right = a.copy(), a.copy()
        left[:, half:] = False
        right[:, :half] = False
        Image.fromarray(np.where(left, 255, 0).astype(np.uint8)).save(out / "000.png")
        Image.fromarray(np.where(right, 254, 0).astype(np.uint8)).save(out / "001.png")
    return dst


def to_folder(cat: Path, root: Path) -> dict[str, Path]:
    """``cat``'s test split as an anomalib Folder layout: normal (train), normal_test,
    abnormal/<defect>_<name>.png and mask/<defect>_<name>.png (same names)."""
    d = {k: root / k for k in ("normal", "normal_test", "abnormal", "mask")}
    shutil.copytree(cat / "train" / "good", d["normal"])
    shutil.copytree(cat / "test" / "good", d["normal_test"])
    d["abnormal"].mkdir()
    d["mask"].mkdir()
    for f in sorted((cat / "test").glob("*/*.png")):
        if f.parent.name == "good":
            continue
        shutil.copy(f, d["abnormal"] / f"{f.parent.name}_{f.name}")
        mask = cat / "ground_truth" / f.parent.name / f"{f.stem}_mask.png"
        shutil.copy(mask, d["mask"] / f"{f.parent.name}_{f.name}")
    return d
