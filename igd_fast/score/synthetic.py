"""Synthetic defects on validation normals, for the decisions (:mod:`igd_fast.score.decide`):
what is known about defects without a single labelled one.

Each validation normal gets defects drawn by :func:`igd_fast.data.defects.draw_defect` (Perlin
blobs and thin lines, filled with another normal's structure, a photometric change, texture,
a flat colour or noise, blended in), at the size it is scored at, with a seeded generator: the
same model directory always gets the same synthetic set.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..data import imagenet_normalise, imagenet_pixels
from ..data.defects import draw_defect

# at least this many synthetic defects in all (more per image when there are few normals)
MIN_SYNTHETIC = 64
MAX_PER_IMAGE = 16
SEED = 20261206


def per_image(n_normals: int) -> int:
    """Synthetic defects per validation normal."""
    return max(1, min(MAX_PER_IMAGE, math.ceil(MIN_SYNTHETIC / max(n_normals, 1))))


def synthetic_defects(x: Tensor, k: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """(N·k images, N·k×1×H×W {0, 1} masks): ``k`` defects on each of the N ImageNet-normalised
    images ``x`` (image i's copies at i·k .. i·k + k - 1), drawn with the others as the pool."""
    pix = imagenet_pixels(x.cpu())
    pool = list(pix)
    out, masks = [], []
    for img in pool:
        for _ in range(k):
            d, m = draw_defect(img, pool, gen)
            out.append(d)
            masks.append(m)
    return imagenet_normalise(torch.stack(out)).to(x.device), torch.stack(masks)
