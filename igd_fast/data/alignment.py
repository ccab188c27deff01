"""Whether the training normals share one layout: an object photographed in place (a bottle,
a circuit board: the same part sits at the same pixels in every image) or a surface with no
place of its own (a texture: any crop looks like any other). ``train --preset auto`` picks its
recipe by it (:mod:`igd_fast.cli.presets`).

The measure, on the images in grey at 32×32: how much the mean image varies across positions
(what every image shows at the same place), less what a mean of n images varies by chance,
relative to how much the images vary at a position (the mean over positions of the per-position
variance). A texture's mean image is flat (measured 0.0014 and 0.054 on textures_dev grass and
moon); an object's carries its outline (4.7 on MVTec LOCO juice_bottle, 241 on MVTec AD bottle).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .mvtec import CorruptImageError, open_rgb

SIZE = 32  # the layout is coarse: the outline of a part, not its texture
MAX_IMAGES = 200  # evenly spaced among the training files: the mean image is settled long before


@dataclass(frozen=True)
class Alignment:
    """The measure (``strength``) and the images it was taken on."""

    strength: float
    n_images: int


def layout_strength(files: Sequence[str | Path]) -> Alignment:
    """The shared-layout measure of ``files`` (unreadable files are left out: training names
    them); ValueError when fewer than two images can be read."""
    picked = list(files)
    if len(picked) > MAX_IMAGES:
        picked = [picked[i] for i in np.linspace(0, len(picked) - 1, MAX_IMAGES).round().astype(int)]
    grey = []
    for f in picked:
        try:
            im = open_rgb(f).convert("L").resize((SIZE, SIZE), Image.BILINEAR)
        except CorruptImageError:
            continue
        grey.append(np.asarray(im, np.float64) / 255.0)
    if len(grey) < 2:
        raise ValueError(f"the layout measure needs at least 2 readable training images, found {len(grey)}")
    x = np.stack(grey)
    within = float(x.var(axis=0, ddof=1).mean())
    if within <= 1e-12:  # every image the same: all layout
        return Alignment(float("inf"), len(grey))
    between = float(x.mean(axis=0).var()) - within / len(grey)
    return Alignment(max(between, 0.0) / within, len(grey))
