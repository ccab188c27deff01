"""How visible is each defect type, with no model: per test image, the defect's mean grey level
against a ring of background around its mask (2 to 6 px out), in units of the ring's own grey
standard deviation (the texture's local variation), and the defect's width (2 x area /
its boundary pixels: about a line's stroke width, a blob's radius scale). Measured at
the images' own size and at the defect model's working size (224, bilinear as the scorer reads).
A defect whose grey level sits within the texture's own variation and is a few pixels wide has
almost nothing for a grey-level detector to find; colour, which the grey versions remove, is
not counted here.

    python benchmarks/quality/defect_contrast.py ROOT CATEGORY [CATEGORY ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

RING = (2, 6)  # the background ring around a defect, in pixels out from its mask
WORKING = 224  # the defect model's working size (DefectConfig.image_size)


def _dilate(m: torch.Tensor, r: int) -> torch.Tensor:
    return F.max_pool2d(m[None, None].float(), 2 * r + 1, 1, r)[0, 0] > 0


def _read(path: Path, size: int | None, mode: str) -> Image.Image:
    im = Image.open(path).convert(mode)
    return im.resize((size, size), Image.BILINEAR) if size else im


def visibility(image: Path, mask: Path, size: int | None = None) -> tuple[float, float]:
    """(|mean grey inside - mean grey of the ring| / the ring's grey std, width in px) of one
    defect; NaN where the mask is empty at this size."""
    grey = torch.from_numpy(np.asarray(_read(image, size, "RGB"), dtype=np.float64).mean(2))
    m = torch.from_numpy(np.asarray(_read(mask, size, "L")) > 127)
    if not bool(m.any()):
        return float("nan"), float("nan")
    ring = _dilate(m, RING[1]) & ~_dilate(m, RING[0])
    contrast = float((grey[m].mean() - grey[ring].mean()).abs() / grey[ring].std().clamp_min(1e-9))
    boundary = m & _dilate(~m, 1)
    return contrast, float(2 * m.sum() / boundary.sum().clamp_min(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("categories", nargs="+")
    a = ap.parse_args()
    print(f"| category | defect | images | contrast (ring std): median (quartiles) | at {WORKING}² | width, px |")
    print("|---|---|---|---|---|---|")
    for cat in a.categories:
        d = a.root / cat
        for kind in sorted(p.name for p in (d / "test").iterdir() if p.is_dir() and p.name != "good"):
            images = sorted((d / "test" / kind).glob("*.png"))
            pairs = [(p, d / "ground_truth" / kind / f"{p.stem}_mask.png") for p in images]
            own = np.array([visibility(i, m) for i, m in pairs])
            work = np.array([visibility(i, m, WORKING)[0] for i, m in pairs])
            q1, med, q3 = np.nanpercentile(own[:, 0], [25, 50, 75])
            print(f"| {cat} | {kind} | {len(pairs)} | {med:.2f} ({q1:.2f}-{q3:.2f}) | {np.nanmedian(work):.2f} | "
                  f"{np.nanmedian(own[:, 1]):.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
