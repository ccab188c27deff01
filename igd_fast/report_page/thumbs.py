"""Small pictures of one scored image for the results page: the image with its mask
outlines and the heat-map overlay, each a WebP data URI (JPEG where Pillow lacks WebP;
inline: the page fetches nothing).

The overlay is the one of ``igd-fast score`` (:func:`igd_fast.score.io.overlay`, on the
same colour scale), computed at thumbnail size.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, features

from ..data import CorruptImageError
from ..score.io import overlay, read_rgb

# the longer side of a thumbnail: 500 images stay a few MB of page
THUMB_PX = 160
# WebP at 75: about 5.5 KB per 160-px MVTec picture, 2.7 MB of page for 500 images (JPEG at 82: 5.8 MB)
QUALITY = 75
PRED_RGB = (255, 48, 48)  # pred_mask outline
TRUE_RGB = (40, 230, 40)  # ground-truth outline


@dataclass
class Thumbs:
    """Data URIs of one image: ``image`` (with the outlines), ``overlay`` (None without a
    map); ``link``: a full-size file of the run's outputs, relative to the page."""

    image: str
    overlay: str | None = None
    link: str | None = None


def thumb_size(h: int, w: int, px: int = THUMB_PX) -> tuple[int, int]:
    """(H, W) with the longer side at most ``px``, the aspect kept."""
    s = min(1.0, px / max(h, w))
    return max(1, round(h * s)), max(1, round(w * s))


def _resize(a: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Box-filtered resize of an H×W×3 uint8 or H×W float array to ``hw``."""
    im = Image.fromarray(a if a.dtype == np.uint8 else a.astype(np.float32))
    return np.asarray(im.resize((hw[1], hw[0]), Image.Resampling.BOX))


def outline(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """The boundary pixels (4-neighbourhood) of ``mask`` shrunk to ``hw``; a region
    that covers any part of a thumbnail pixel marks it, so thin defects stay visible."""
    m = np.pad(_resize(mask.astype(np.float32), hw) > 0.0, 1, mode="edge")  # no outline along the border
    inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return m[1:-1, 1:-1] & ~inner


def data_uri(rgb: np.ndarray) -> str:
    """An H×W×3 uint8 picture as a lossy ``data:`` URI."""
    fmt = "webp" if features.check("webp") else "jpeg"
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt.upper(), quality=QUALITY)
    return f"data:image/{fmt};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def make_thumbs(
    path: str | Path, amap: np.ndarray | None, vrange: tuple[float, float] | None,
    pred_mask: np.ndarray | None = None, true_mask: np.ndarray | None = None, px: int = THUMB_PX,
) -> Thumbs | None:  # fmt: skip
    """The thumbnails of the image at ``path``: ``amap`` and the masks at its size;
    ``vrange`` the map's colour scale (None: this map's own min and max). None when the
    file cannot be read any more (changed since it was scored): its row has no pictures."""
    try:
        rgb = read_rgb(path)
    except (CorruptImageError, OSError):
        return None
    if amap is not None and amap.shape != rgb.shape[:2]:
        return None
    hw = thumb_size(*rgb.shape[:2], px)
    small = _resize(rgb, hw)
    pic = small.copy()
    for mask, colour in ((true_mask, TRUE_RGB), (pred_mask, PRED_RGB)):
        if mask is not None and mask.any():
            pic[outline(mask, hw)] = colour
    if amap is None:
        return Thumbs(data_uri(pic))
    lo, hi = (float(amap.min()), float(amap.max())) if vrange is None else vrange
    return Thumbs(data_uri(pic), data_uri(overlay(small, _resize(amap, hw), lo, hi)))
