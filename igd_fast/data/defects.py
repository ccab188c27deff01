"""Synthetic defects drawn on normal images: what the defect model trains on, and what
calibration can place thresholds against when no real defect has been seen.

A defect is a shape (a binary mask) filled with foreign content and blended in:

    x' = (1 - m) · x + m · ((1 - beta) · fill + beta · x),   beta ~ U(0, 0.8)

Shapes (generic, not those of any test set's generator):
  * ``blob``: Perlin noise above 0.5 (DRAEM, Zavrtanik et al. 2021) with random periods
    per axis, so blobs, streaks and speckles all occur;
  * ``line``: thin level curves |Perlin| < t kept inside a coarse blob: cracks and
    scratches of any curvature.
Fills:
  * ``structure``: another normal image (or the same one) moved and turned, untouched in
    colour: misplaced structure (CutPaste, Li et al. 2021) that a colour check cannot see;
  * ``augmented``: the same, with three random photometric changes (contrast, brightness,
    solarise, posterise, invert, channel order, blur / sharpen);
  * ``texture``: procedural Perlin texture, grey or two-colour; ``flat``: one grey level or
    colour; ``noise``: per-pixel grey noise.

Images are 3×H×W float tensors in [0, 1] (pixel space, before ImageNet normalisation).
Every draw comes from the ``torch.Generator`` passed in, so a seed fixes the defects.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

SHAPES = ("blob", "line")
FILLS = ("structure", "augmented", "texture", "flat", "noise")
# chance of each fill (sums to 1) and of a thin shape
FILL_WEIGHTS = (0.25, 0.25, 0.2, 0.15, 0.15)
LINE_CHANCE = 0.3
MAX_BETA = 0.8  # the fill keeps at least 20 % of its own content
MIN_PIXELS = 8  # a drawn mask smaller than this is redrawn


def _uniform(gen: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def _randint(gen: torch.Generator, lo: int, hi: int) -> int:
    """An integer in [lo, hi)."""
    return int(torch.randint(lo, hi, (), generator=gen))


def perlin(height: int, width: int, periods: tuple[int, int], gen: torch.Generator) -> Tensor:
    """H×W gradient (Perlin) noise with ``periods`` = (rows, columns) lattice cells over the
    image, values in about [-1, 1] (quintic fade, random unit gradients per lattice point)."""
    py, px = periods
    y = torch.arange(height, dtype=torch.float32) * (py / height)
    x = torch.arange(width, dtype=torch.float32) * (px / width)
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    angle = torch.rand(py + 1, px + 1, generator=gen) * (2 * math.pi)
    grad = torch.stack([angle.cos(), angle.sin()], -1)
    y0, x0 = yy.floor().long(), xx.floor().long()
    fy, fx = yy - y0, xx - x0

    def corner(dy: int, dx: int) -> Tensor:
        g = grad[y0 + dy, x0 + dx]
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

    def fade(t: Tensor) -> Tensor:
        return t * t * t * (t * (6 * t - 15) + 10)

    u, v = fade(fx), fade(fy)
    top = corner(0, 0) + u * (corner(0, 1) - corner(0, 0))
    bottom = corner(1, 0) + u * (corner(1, 1) - corner(1, 0))
    return math.sqrt(2) * (top + v * (bottom - top))


def _periods(height: int, width: int, gen: torch.Generator) -> tuple[int, int]:
    # lattice cells of at least ~16 px: finer noise gives speckle, not shapes
    top = max(1, int(math.log2(max(min(height, width) // 16, 2))))
    return 2 ** _randint(gen, 0, top + 1), 2 ** _randint(gen, 0, top + 1)


def defect_shape(height: int, width: int, gen: torch.Generator, shape: str | None = None) -> Tensor:
    """An H×W {0, 1} float mask of one ``shape`` (random when None) with at least
    MIN_PIXELS pixels set (a few redraws; an empty mask only if every draw failed)."""
    shape = shape or ("line" if _uniform(gen) < LINE_CHANCE else "blob")
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    m = torch.zeros(height, width)
    for _ in range(5):
        n = perlin(height, width, _periods(height, width, gen), gen)
        n = n.flip(0) if _uniform(gen) < 0.5 else n
        n = n.flip(1) if _uniform(gen) < 0.5 else n
        if shape == "blob":
            m = (n > 0.5).float()
        else:
            coarse = perlin(height, width, (2, 2), gen) > 0.2
            m = ((n.abs() < _uniform(gen, 0.02, 0.08)) & coarse).float()
        if m.sum() >= MIN_PIXELS:
            break
    return m


def _moved(img: Tensor, gen: torch.Generator) -> Tensor:
    """The image flipped, turned (by 90° steps when square, else 0° or 180°) and rolled:
    its content misplaced, its size kept."""
    x = img.flip(2) if _uniform(gen) < 0.5 else img
    square = x.shape[1] == x.shape[2]
    x = torch.rot90(x, _randint(gen, 0, 4) if square else 2 * _randint(gen, 0, 2), (1, 2))
    return torch.roll(x, (_randint(gen, 0, x.shape[1]), _randint(gen, 0, x.shape[2])), (1, 2))


def _photometric(x: Tensor, gen: torch.Generator) -> Tensor:
    """Three random photometric changes (DRAEM's augmenter, in torch)."""
    for op in torch.randperm(7, generator=gen)[:3].tolist():
        r = _uniform(gen)
        if op == 0:
            x = x.clamp(1e-4, 1) ** (0.5 + 1.5 * r)  # contrast (gamma)
        elif op == 1:
            x = (x * (0.5 + r) + _uniform(gen, -0.2, 0.2)).clamp(0, 1)  # brightness
        elif op == 2:
            x = torch.where(x > 0.5 + 0.4 * r, 1 - x, x)  # solarise
        elif op == 3:
            levels = 2 ** int(2 + 3 * r)
            x = (x * levels).floor() / levels  # posterise
        elif op == 4:
            x = 1 - x  # invert
        elif op == 5:
            x = x[torch.randperm(x.shape[0], generator=gen)]  # channel order
        else:
            k = torch.tensor([1.0, 4, 6, 4, 1])
            k = (k[:, None] * k[None]) / 256
            c = x.shape[0]
            blur = F.conv2d(F.pad(x[None], (2, 2, 2, 2), mode="replicate"), k.expand(c, 1, 5, 5), groups=c)[0]
            x = blur if r < 0.5 else (2 * x - blur).clamp(0, 1)  # blur / sharpen
    return x


def _procedural(kind: str, height: int, width: int, gen: torch.Generator) -> Tensor:
    if kind == "texture":
        cells = 2 ** _randint(gen, 2, 6)
        n = perlin(height, width, (cells, cells), gen)
        n = (n - n.min()) / (n.max() - n.min() + 1e-6)
        if _uniform(gen) < 0.5:
            return n.expand(3, height, width).clone()
        a, b = torch.rand(3, 1, 1, generator=gen), torch.rand(3, 1, 1, generator=gen)
        return n[None] * a + (1 - n[None]) * b
    if kind == "flat":
        c = torch.rand(1, 1, 1, generator=gen).expand(3, 1, 1) if _uniform(gen) < 0.5 else torch.rand(3, 1, 1,
                                                                                                      generator=gen)
        return c.expand(3, height, width).clone()
    return torch.rand(1, height, width, generator=gen).expand(3, height, width).clone()


def defect_fill(img: Tensor, pool: Sequence[Tensor], gen: torch.Generator, fill: str | None = None) -> Tensor:
    """A 3×H×W fill for ``img`` of kind ``fill`` (random by FILL_WEIGHTS when None); the
    image fills take another image of ``pool`` (resized to ``img``'s size when needed)."""
    if fill is None:
        fill = FILLS[int(torch.multinomial(torch.tensor(FILL_WEIGHTS), 1, generator=gen))]
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
    _, h, w = img.shape
    if fill in ("structure", "augmented"):
        src = pool[_randint(gen, 0, len(pool))] if len(pool) else img
        if src.shape[1:] != img.shape[1:]:
            src = F.interpolate(src[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        src = _moved(src, gen)
        return _photometric(src, gen) if fill == "augmented" else src
    return _procedural(fill, h, w, gen)


def draw_defect(
    img: Tensor, pool: Sequence[Tensor], gen: torch.Generator, shape: str | None = None, fill: str | None = None
) -> tuple[Tensor, Tensor]:
    """(image with one synthetic defect, its 1×H×W {0, 1} mask) for a 3×H×W image in [0, 1]."""
    _, h, w = img.shape
    m = defect_shape(h, w, gen, shape)[None]
    beta = _uniform(gen, 0.0, MAX_BETA)
    src = defect_fill(img, pool, gen, fill)
    return img * (1 - m) + m * ((1 - beta) * src + beta * img), m
