"""Reading images for scoring and writing what a person looks at (heat-map overlays).

Scoring must survive bad files: the dataset never raises on an unreadable image, it
returns the error, and the collate function keeps those apart from the batch.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from ..data import CorruptImageError, image_size_of, image_tensor, images_under, load_image, open_rgb, working_size
from ..data.files import glob_files
from ..outputs import atomic_write_bytes, save_image


def list_images(spec: str | Path, exclude: Sequence[str | Path] = ()) -> list[Path]:
    """Image files named by a folder (searched recursively) or a glob pattern, sorted.

    A folder yields every file with an image extension below it (the listing rule of
    ``igd_fast.data.files``, also used for training and evaluation: symlinked folders
    followed once, hidden files, ``exclude`` — the run's own output folder — and other
    igd-fast output folders skipped); a glob yields every regular file it matches
    (whatever its extension: a file named explicitly is scored, and reported if it
    cannot be read). An empty ``spec`` is a ValueError (not the working directory).
    """
    if not str(spec).strip():
        raise ValueError("the input is empty: name a folder or a glob pattern (an unset shell variable?)")
    p = Path(spec)
    if p.is_dir():
        files = images_under(p, exclude)
    elif p.is_file():
        files = [p]
    else:
        files = glob_files(str(spec), exclude)
    return sorted(files)


@dataclass
class Item:
    """One image read for scoring (``image`` None and ``error`` set when unreadable)."""

    index: int
    path: str
    image: Tensor | None
    orig_size: tuple[int, int]
    error: str | None = None
    pos: int = 0  # position in the dataset: results are put back in input order


class ScoreDataset(Dataset):
    """Images resized to the model size and ImageNet-normalised, with their original
    (H, W); any size, grayscale / RGB / RGBA / 16-bit (see ``igd_fast.data.load_image``)."""

    def __init__(self, paths: list[str | Path], size: int, indices: list[int] | None = None,
                 keep_aspect: bool = False, data: list[bytes] | None = None) -> None:  # fmt: skip
        self.paths = [str(p) for p in paths]
        self.size = size
        self.keep_aspect = keep_aspect
        self.indices = list(range(len(self.paths))) if indices is None else list(indices)
        self.data = data  # the files' bytes, already read (then ``paths`` only name them)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Item:
        path = self.paths[i]
        try:
            if self.data is None:
                hw = image_size_of(path)
                img = load_image(path, scoring_size(hw, self.size, self.keep_aspect))
            else:  # decoded once; the same pixels as load_image of the file
                im = open_rgb(path, self.data[i])
                hw = (im.height, im.width)
                img = image_tensor(im, scoring_size(hw, self.size, self.keep_aspect))
        except Exception as e:  # any decoder failure is reported, never fatal
            return Item(self.indices[i], path, None, (0, 0), f"{type(e).__name__}: {e}", i)
        return Item(self.indices[i], path, img, hw, None, i)


def scoring_size(hw: tuple[int, int], size: int | None, keep_aspect: bool) -> tuple[int, int]:
    """The (H, W) an image of ``hw`` is read at: ``size``² (squashed), or with ``keep_aspect``
    its longer side at ``size`` (:func:`igd_fast.data.working_size`); None: its own size (an
    exported graph resizes it itself)."""
    if size is None:
        return tuple(hw)
    return working_size(hw[0], hw[1], size) if keep_aspect else (size, size)


@dataclass
class Batch:
    """Readable images stacked (N×3×H×W) plus the ones that failed to read. Images read at
    their own aspect may differ in size: then ``images`` is None and ``parts`` holds one
    batch per size (:meth:`by_size`)."""

    images: Tensor | None
    items: list[Item]
    failed: list[Item]
    parts: list[Batch] | None = None

    def by_size(self) -> list[Batch]:
        """The readable images in batches of one size each (none when all failed)."""
        if self.parts is not None:
            return self.parts
        return [self] if self.images is not None else []

    def pin_memory(self) -> Batch:
        """Called by DataLoader(pin_memory=True): page-locked pixels for async GPU copies."""
        for b in self.by_size():
            b.images = b.images.pin_memory()
        return self


def collate(items: list[Item]) -> Batch:
    ok = [it for it in items if it.error is None]
    bad = [it for it in items if it.error is not None]
    groups: dict[tuple, list[Item]] = {}
    for it in ok:
        groups.setdefault(tuple(it.image.shape), []).append(it)
    parts = [Batch(torch.stack([it.image for it in g]), g, []) for g in groups.values()]
    for it in ok:
        it.image = None  # the stacked tensors hold the pixels; don't ship them twice
    if len(parts) == 1:
        return Batch(parts[0].images, ok, bad)
    return Batch(None, ok, bad, parts or None)


def all_grey(paths: Sequence[str | Path]) -> bool:
    """True when at least one of ``paths`` can be read and every readable one is grey
    (R = G = B at every pixel after the scoring's RGB conversion; unreadable files are
    left to the caller, which reports them)."""
    seen = False
    for p in paths:
        try:
            a = np.asarray(open_rgb(p))
        except CorruptImageError:
            continue
        if not ((a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()):
            return False
        seen = True
    return seen


def jet(values: np.ndarray) -> np.ndarray:
    """The jet colormap (matplotlib's piecewise-linear definition) of values in [0, 1] -> uint8 RGB."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    centres = np.array([0.75, 0.5, 0.25], np.float32)  # red, green, blue peaks
    rgb = np.clip(1.5 - np.abs(4.0 * (v - centres)), 0.0, 1.0)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def normalise_map(amap: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """Map values to [0, 1] on a fixed scale (so colours compare across images)."""
    return (amap - vmin) / max(vmax - vmin, 1e-12)


def read_rgb(path: str | Path, data: bytes | None = None) -> np.ndarray:
    """H×W×3 uint8 of an image file (or of its bytes ``data``) at its original size (any
    mode, the same conversion as the scored pixels)."""
    return np.asarray(open_rgb(path, data))


def overlay(rgb: np.ndarray, amap: np.ndarray, vmin: float, vmax: float, alpha: float = 0.5) -> np.ndarray:
    """Jet heat-map of ``amap`` (H×W, same size as ``rgb``) blended over the image."""
    if rgb.shape[:2] != amap.shape:
        raise ValueError(f"image {rgb.shape[:2]} and map {amap.shape} differ in size")
    heat = jet(normalise_map(amap, vmin, vmax)).astype(np.float32)
    out = (1.0 - alpha) * rgb.astype(np.float32) + alpha * heat
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def save_overlay(path: str | Path, image_path: str | Path, amap: np.ndarray, vmin: float, vmax: float) -> None:
    """The overlay as a PNG, written atomically (a killed run leaves no half file)."""
    save_image(path, overlay(read_rgb(image_path), amap, vmin, vmax), "PNG")


def save_tiff(path: str | Path, amap: np.ndarray) -> None:
    """A real-valued H×W map as a float32 TIFF (what the MVTec AD / LOCO evaluation
    scripts read): tifffile when installed, else Pillow (a float32 array is its mode "F")."""
    a = np.ascontiguousarray(amap, dtype=np.float32)
    if a.ndim != 2:
        raise ValueError(f"a TIFF map must be H×W, got shape {a.shape}")
    try:
        import tifffile
    except ImportError:
        save_image(path, Image.fromarray(a), "TIFF")
        return
    buf = io.BytesIO()  # tifffile wants a named or in-memory file
    tifffile.imwrite(buf, a)
    data = buf.getvalue()
    atomic_write_bytes(path, lambda f: f.write(data), durable=False)


def read_tiff(path: str | Path) -> np.ndarray:
    """The float32 map of :func:`save_tiff` (tifffile when installed, else Pillow)."""
    try:
        import tifffile
    except ImportError:
        with Image.open(path) as im:
            return np.asarray(im, dtype=np.float32)
    return np.asarray(tifffile.imread(path), dtype=np.float32)


def mask_pixels(mask: np.ndarray) -> np.ndarray:
    """A boolean H×W mask as 8-bit pixels, 255 = anomalous (the MVTec ground-truth convention)."""
    return np.where(mask, 255, 0).astype(np.uint8)


def save_mask(path: str | Path, mask: np.ndarray) -> None:
    """A boolean H×W mask as an 8-bit PNG (:func:`mask_pixels`)."""
    save_image(path, mask_pixels(mask), "PNG")
