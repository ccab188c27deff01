"""A small synthetic dataset in the MVTec AD layout, written as real PNG files.

Normals are a textured surface (two crossed sinusoid gratings of random phase over a
base colour, plus mild pixel noise); anomalies add a blob (filled ellipse) or a
scratch (thick line) of a contrasting colour, with its binary mask in ground_truth/.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    f1, f2 = 6.0, 9.0
    p1, p2 = rng.uniform(0, 2 * np.pi, 2)
    t = 0.5 + 0.25 * np.sin(2 * np.pi * f1 * xx + p1) + 0.25 * np.sin(2 * np.pi * f2 * yy + p2)
    base = np.array([0.55, 0.45, 0.35], np.float32) + rng.normal(0, 0.02, 3).astype(np.float32)
    img = base[None, None, :] * (0.6 + 0.4 * t[..., None])
    img = img + rng.normal(0, 0.02, img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _defect(rng: np.random.Generator, size: int, kind: str) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(mask)
    if kind == "blob":
        r = rng.uniform(0.08, 0.18) * size
        cx, cy = rng.uniform(r, size - r, 2)
        d.ellipse([cx - r, cy - r * rng.uniform(0.5, 1.0), cx + r, cy + r], fill=255)
    else:
        x0, y0, x1, y1 = rng.uniform(0.1 * size, 0.9 * size, 4)
        d.line([x0, y0, x1, y1], fill=255, width=max(2, size // 24))
    return mask


def make_synthetic_mvtec(
    root: str | Path,
    category: str = "synth",
    n_train: int = 16,
    n_test_good: int = 4,
    n_test_bad: int = 4,
    size: int = 64,
    seed: int = 0,
) -> Path:
    """Write ``root/category`` in the MVTec layout and return that folder.

    Defect folders ``blob`` and ``scratch`` share the ``n_test_bad`` images (alternating);
    masks are 0/255 PNGs named ``<name>_mask.png``. Same arguments give identical files.
    """
    rng = np.random.default_rng(seed)
    cat = Path(root) / category
    for sub in ("train/good", "test/good"):
        (cat / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        Image.fromarray(_texture(rng, size)).save(cat / "train" / "good" / f"{i:03d}.png")
    for i in range(n_test_good):
        Image.fromarray(_texture(rng, size)).save(cat / "test" / "good" / f"{i:03d}.png")
    for i in range(n_test_bad):
        kind = ("blob", "scratch")[i % 2]
        (cat / "test" / kind).mkdir(parents=True, exist_ok=True)
        (cat / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
        img = _texture(rng, size)
        mask = _defect(rng, size, kind)
        colour = np.array([30, 60, 200] if kind == "blob" else [240, 240, 240], np.uint8)
        m = np.asarray(mask) > 127
        img[m] = colour
        name = f"{i:03d}"
        Image.fromarray(img).save(cat / "test" / kind / f"{name}.png")
        mask.save(cat / "ground_truth" / kind / f"{name}_mask.png")
    return cat
