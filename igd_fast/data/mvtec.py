"""MVTec-AD layout reader (and MVTec LOCO AD, which differs only in its masks).

Layout (``root/category``)::

    train/good/*.png                    training normals
    validation/good/*.png               (MVTec LOCO only) validation normals
    test/<defect>/*.png                 test images, ``good`` = normal
    ground_truth/<defect>/<name>_mask.png  masks of the anomalous test images (MVTec AD)
    ground_truth/<defect>/<name>/000.png, 001.png, ...  (MVTec LOCO) one file per
                                        annotated region, merged with a logical OR

Images are returned as float32 3×S×S tensors, resized to the model size and
normalised with ImageNet mean/std (so values lie in [-2.1179, 2.6400], the data range
4.7579 the MS-SSIM constants assume).
"""

from __future__ import annotations

import io
import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from ..limits import LimitError, check_pixels
from .files import NotARegularFile, regular_file, walk_files

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

LAYOUT = (
    "expected the MVTec AD layout: <root>/<category>/train/good/*.png, "
    "<root>/<category>/test/<defect>/*.png (normal test images in test/good), "
    "<root>/<category>/ground_truth/<defect>/<name>_mask.png (or, MVTec LOCO, "
    "<root>/<category>/ground_truth/<defect>/<name>/000.png ...)"
)


class DataLayoutError(ValueError):
    """The data folder is missing, empty or not laid out as MVTec AD."""


class CorruptImageError(ValueError):
    """An image file could not be decoded (or may not be: too large, not a regular file,
    values out of range); the message names the file."""


@dataclass(frozen=True)
class Sample:
    """One image of a split: its file, defect type ('good' = normal), mask file (or a
    folder of mask files to OR, MVTec LOCO) and its path below its defect folder."""

    path: Path
    defect: str = "good"
    mask: Path | None = None
    rel: str = ""

    @property
    def label(self) -> int:
        return 0 if self.defect == "good" else 1


def images_under(folder: str | Path, exclude: Sequence[str | Path] = ()) -> list[Path]:
    """Image files below ``folder``, recursively, sorted: the listing rule of
    :mod:`igd_fast.data.files` (hidden files skipped, symlinked folders followed once,
    ``exclude`` and igd-fast output folders skipped)."""
    return sorted(p for p in walk_files(folder, exclude) if p.suffix.lower() in IMAGE_EXTENSIONS)


def _category_dir(root: str | Path, category: str) -> Path:
    d = Path(root) / category
    if not d.is_dir():
        raise DataLayoutError(f"category folder {d} does not exist; {LAYOUT}")
    return d


def image_files(folder: str | Path, name: str, hint: str = "") -> list[Path]:
    """:func:`images_under` of a folder that must exist and hold images; the
    DataLayoutError names it as ``name`` (a path or a flag) and adds ``hint``."""
    d = Path(folder)
    if not d.is_dir():
        raise DataLayoutError(f"{name} does not exist{hint}")
    files = images_under(d)
    if not files:
        raise DataLayoutError(f"{name} holds no image files ({', '.join(IMAGE_EXTENSIONS)}){hint}")
    return files


def list_train_files(root: str | Path, category: str) -> list[Path]:
    """Sorted image files of ``root/category/train/good``."""
    d = _category_dir(root, category) / "train" / "good"
    return image_files(d, str(d), f"; {LAYOUT}")


def list_test_samples(root: str | Path, category: str, require_masks: bool = True) -> list[Sample]:
    """Test images of every defect folder (sorted), with their masks for anomalous ones."""
    cat = _category_dir(root, category)
    tdir = cat / "test"
    if not tdir.is_dir():
        raise DataLayoutError(f"{tdir} does not exist; {LAYOUT}")
    out: list[Sample] = []
    for ddir in sorted(p for p in tdir.iterdir() if p.is_dir()):
        for f in images_under(ddir):
            mask = None
            if ddir.name != "good":
                rel = f.relative_to(ddir)
                mask = cat / "ground_truth" / ddir.name / rel.parent / f"{f.stem}_mask.png"
                loco = mask.with_name(f.stem)  # MVTec LOCO: a folder of region masks
                if not mask.is_file() and loco.is_dir() and images_under(loco):
                    mask = loco
                elif not mask.is_file():
                    if require_masks:
                        raise DataLayoutError(f"no mask {mask} (nor a folder {loco}/ of masks) for test image {f}; "
                                              f"{LAYOUT}")  # fmt: skip
                    mask = None
            out.append(Sample(f, ddir.name, mask, f.relative_to(ddir).as_posix()))
    if not out:
        raise DataLayoutError(f"{tdir} holds no image files in any <defect> sub-folder; {LAYOUT}")
    return out


def list_validation_files(root: str | Path, category: str) -> list[Path]:
    """Sorted image files of ``root/category/validation/good`` (MVTec LOCO's validation
    split); [] when the category has none (MVTec AD: the split comes from train/good)."""
    d = _category_dir(root, category) / "validation" / "good"
    return images_under(d) if d.is_dir() else []


def split_train_val(files: Sequence[Path], val_fraction: float = 0.1, seed: int = 0) -> tuple[list[Path], list[Path]]:
    """Deterministic split of the training normals: the validation part depends only on
    the sorted file names, ``val_fraction`` and ``seed``. At least one file stays in each
    part when ``val_fraction > 0`` and there are two or more files."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    files = sorted(Path(f) for f in files)
    n_val = int(round(val_fraction * len(files)))
    if val_fraction > 0 and len(files) >= 2:
        n_val = min(max(n_val, 1), len(files) - 1)
    order = list(range(len(files)))
    random.Random(seed).shuffle(order)
    val_idx = set(order[:n_val])
    train = [f for i, f in enumerate(files) if i not in val_idx]
    val = [f for i, f in enumerate(files) if i in val_idx]
    return train, val


def _to_uint8(im: Image.Image, what="image") -> Image.Image:
    """8-bit view of a high-bit-depth image, scaled by its bit depth, never by its own
    min/max (a darker copy must stay darker): I;16* and I (16-bit PNG/TIFF) divide by
    65535 (values above it, possible only in 32-bit files, saturate); F (float TIFF)
    must hold values in [0, 1] (a float image of 0-255 values, or NaN, is refused with
    the file named rather than clipped to white)."""
    a = np.asarray(im, dtype=np.float64)
    if im.mode == "F":
        lo, hi = (float(np.nanmin(a)), float(np.nanmax(a))) if a.size and not np.isnan(a).all() else (0.0, 0.0)
        if not np.isfinite(a).all() or lo < 0.0 or hi > 1.0:
            bad = "NaN or inf values" if not np.isfinite(a).all() else f"values in [{lo:g}, {hi:g}]"
            raise CorruptImageError(f"image file {what} is a float image with {bad}; float images must hold values "
                                    "in [0, 1] (save 0-255 data as 8-bit, or divide it by 255)")  # fmt: skip
    scale = 255.0 if im.mode == "F" else 255.0 / 65535.0
    return Image.fromarray(_scaled_uint8(a, scale))


def _scaled_uint8(a: np.ndarray, scale: float) -> np.ndarray:
    return np.clip(np.rint(a.astype(np.float64, copy=False) * scale), 0, 255).astype(np.uint8)


def rgb_image(im: Image.Image, what="image") -> Image.Image:
    """An opened image as 8-bit RGB (RGBA / LA / P / L / 16-bit all end up as 3 channels)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _to_uint8(im, what).convert("RGB")
    return im.convert("RGB")


# EXIF orientations that swap width and height (transpose, rotate 90/270, transverse)
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - a damaged EXIF block: no rotation
        return 1


def _opened(path, what: str = "image file"):
    """``Image.open`` of a regular file within the pixel limit (checked on the header, before
    any pixel is decoded); CorruptImageError naming the file otherwise."""
    try:
        regular_file(path, what)
    except (FileNotFoundError, NotARegularFile) as e:
        raise CorruptImageError(f"cannot read {e}") from None
    try:
        im = Image.open(path)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise CorruptImageError(f"cannot read {what} {path}: {e}") from e
    try:
        check_pixels(im.size[0], im.size[1], f"{what} {path}")
    except LimitError as e:
        im.close()
        raise CorruptImageError(str(e)) from None
    return im


def open_rgb(path: str | Path, data: bytes | None = None) -> Image.Image:
    """The image as 8-bit RGB (:func:`rgb_image`), turned upright by its EXIF orientation
    (as viewers show it); CorruptImageError naming the file when it cannot be decoded, is
    not a regular file or is over the pixel limit (:mod:`igd_fast.limits`). ``data``: the
    file's bytes, already read (``path`` then only names them)."""
    if data is not None:  # the same decoding as an HTTP body's; over the limit is this file's error
        try:
            return decode_rgb(data, f"image file {path}")
        except LimitError as e:
            raise CorruptImageError(str(e)) from None
    with _opened(path) as im:
        return _upright_rgb(im, str(path), f"image file {path}")


def decode_rgb(data: bytes, what: str = "image", formats: Sequence[str] | None = None) -> Image.Image:
    """:func:`open_rgb` of an encoded image held in memory (e.g. an HTTP request's body):
    the same pixels as the file of these bytes. ``formats``: the Pillow formats allowed
    (None: any). LimitError (before any pixel is decoded) when over the pixel limit,
    CorruptImageError when it cannot be decoded."""
    try:
        im = Image.open(io.BytesIO(data), formats=formats)
    except Image.DecompressionBombError as e:  # Pillow's own limit, far above ours: the same refusal
        raise LimitError(f"{what}: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise CorruptImageError(f"cannot read {what}: {e}") from None
    with im:
        check_pixels(im.size[0], im.size[1], what)
        return _upright_rgb(im, what, what)


def _upright_rgb(im: Image.Image, name: str, what: str) -> Image.Image:
    try:
        im.load()
        upright = ImageOps.exif_transpose(im) if _orientation(im) != 1 else im
        return rgb_image(upright, name)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        if isinstance(e, CorruptImageError):
            raise
        raise CorruptImageError(f"cannot read {what}: {e}") from e


def array_image(a: np.ndarray) -> Image.Image:
    """An H×W or H×W×C (C = 1, 2, 3, 4) array as 8-bit RGB by the files' bit-depth rule:
    uint8 as it is, uint16 divided by 65535, float taken as [0, 1] (as a float TIFF);
    the channels as the file of that mode (L, LA, RGB, RGBA) would convert."""
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (2, 3, 4)):
        raise ValueError(f"an image array must be H×W or H×W×C with C in 1-4, got shape {a.shape}")
    check_pixels(a.shape[1], a.shape[0], "an image array")
    if a.dtype == np.uint16:
        a = _scaled_uint8(a, 255.0 / 65535.0)
    elif np.issubdtype(a.dtype, np.floating):
        if a.size and not (np.isfinite(a).all() and a.min() >= 0.0 and a.max() <= 1.0):
            raise ValueError("a float image array must hold values in [0, 1]")
        a = _scaled_uint8(a, 255.0)
    elif a.dtype != np.uint8:
        raise ValueError(f"an image array must be uint8, uint16 or float in [0, 1], got {a.dtype}")
    return rgb_image(Image.fromarray(np.ascontiguousarray(a)))


def image_tensor(im: Image.Image, size: int | tuple[int, int] | None = 256) -> torch.Tensor:
    """3×H×W float32 ImageNet-normalised tensor of an RGB image; resized (bilinear) to ``size`` unless None."""
    if size is not None:
        hw = (size, size) if isinstance(size, int) else tuple(size)
        if im.size != (hw[1], hw[0]):
            im = im.resize((hw[1], hw[0]), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return imagenet_normalise(x).contiguous()


def imagenet_normalise(pixels: torch.Tensor) -> torch.Tensor:
    """(3×H×W or N×3×H×W) pixels in [0, 1] -> ImageNet-normalised, the models' input."""
    mean = torch.tensor(IMAGENET_MEAN, device=pixels.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=pixels.device).view(3, 1, 1)
    return (pixels - mean) / std


def imagenet_pixels(x: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`imagenet_normalise`, clamped to [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(3, 1, 1)
    return (x.float() * std + mean).clamp(0.0, 1.0)


def working_size(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(H, W) scaled so that the longer side is ``long_side``, aspect kept (>= 1 px each)."""
    s = long_side / max(height, width)
    return max(1, round(height * s)), max(1, round(width * s))


def load_image(path: str | Path, size: int | tuple[int, int] | None = 256) -> torch.Tensor:
    """3×H×W float32 ImageNet-normalised image; resized (bilinear) to ``size`` unless None."""
    return image_tensor(open_rgb(path), size)


def _mask_pixels(f, hw) -> np.ndarray:
    """A mask file as an H×W bool array (nearest resize to ``hw``): any non-zero pixel is
    anomalous, so 0/255 (MVTec), 0/1 (other tools) and LOCO's per-defect values all read."""
    with _opened(f, "mask file") as im:
        try:
            return np.asarray(im.convert("L").resize((hw[1], hw[0]), Image.NEAREST)) > 0
        except (OSError, SyntaxError, ValueError) as e:
            raise CorruptImageError(f"cannot read mask file {f}: {e}") from e


def load_mask(path: str | Path | None, size: int | tuple[int, int]) -> torch.Tensor:
    """1×H×W float32 {0, 1} mask (nearest resize to ``size``); zeros when ``path`` is None.

    Any non-zero pixel is anomalous: MVTec AD's 0/255 masks, the 0/1 masks of other
    tools and MVTec LOCO's per-defect values alike. A folder (MVTec LOCO): the logical
    OR of its mask files.
    """
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if path is None:
        return torch.zeros(1, *hw)
    if Path(path).is_dir():
        files = images_under(path)
        if not files:
            raise CorruptImageError(f"mask folder {path} holds no mask files")
        out = np.zeros(hw, bool)
        for f in files:
            out |= _mask_pixels(f, hw)
        return torch.from_numpy(out.astype(np.float32))[None]
    return torch.from_numpy(_mask_pixels(path, hw).astype(np.float32))[None]


def image_size_of(path: str | Path) -> tuple[int, int]:
    """(H, W) of an image file as :func:`open_rgb` gives it (EXIF orientation applied),
    from its header alone."""
    with _opened(path) as im:
        w, h = im.size
        return (w, h) if _orientation(im) in _SWAPPING_ORIENTATIONS else (h, w)


def mask_size_mismatches(samples: Sequence[Sample]) -> list[str]:
    """One line per anomalous sample whose mask's size differs from its image's (read
    from the headers only), so an evaluation can refuse before scoring anything."""
    bad = []
    for s in samples:
        if s.mask is None:
            continue
        for m in images_under(s.mask) if s.mask.is_dir() else [s.mask]:
            try:
                hi, hm = image_size_of(s.path), image_size_of(m)
            except CorruptImageError:
                continue  # reported (and the image skipped) when it is read
            if hi != hm:
                bad.append(f"{m} is {hm[1]}×{hm[0]} but its image {s.path} is {hi[1]}×{hi[0]} (W×H)")
    return bad


def _readable(path: Path) -> bool:
    try:
        open_rgb(path)
        return True
    except CorruptImageError as e:
        warnings.warn(f"skipping {e}", stacklevel=3)
        return False


class MVTecDataset(Dataset):
    """Images of one split of an MVTec-layout category.

    ``split``: ``"train"`` / ``"val"`` (the deterministic split of ``train/good`` by
    ``val_fraction`` and ``seed``), ``"train_all"`` (all of train/good) or ``"test"``.
    ``files`` overrides the file list of a train/val split (e.g. from ``run.json``).
    Items are dicts: ``image`` 3×S×S, ``mask`` 1×S×S, ``label`` (0 normal, 1 anomalous),
    ``path`` (str), ``defect`` (str), ``index``.
    A corrupt image raises :class:`CorruptImageError` naming the file when it is read;
    with ``skip_corrupt=True`` every file is decoded once up front and unreadable ones
    are dropped with a warning.
    """

    def __init__(
        self,
        root: str | Path,
        category: str,
        split: str = "train",
        image_size: int = 256,
        val_fraction: float = 0.1,
        seed: int = 0,
        files: Sequence[str | Path] | None = None,
        skip_corrupt: bool = False,
    ) -> None:
        if split not in ("train", "val", "train_all", "test"):
            raise ValueError(f"split must be train, val, train_all or test, got {split!r}")
        self.root, self.category, self.split, self.image_size = Path(root), category, split, image_size
        if split == "test":
            samples = list_test_samples(root, category)
        elif files is not None:
            samples = [Sample(Path(f)) for f in files]
        else:
            all_files = list_train_files(root, category)
            tr, va = split_train_val(all_files, val_fraction, seed)
            samples = [Sample(f) for f in {"train": tr, "val": va, "train_all": all_files}[split]]
        if skip_corrupt:
            samples = [s for s in samples if _readable(s.path)]
            if not samples and split != "val":
                raise DataLayoutError(f"no readable images left in the {split} split of {root}/{category}")
        self.samples: list[Sample] = samples

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def files(self) -> list[Path]:
        return [s.path for s in self.samples]

    def __getitem__(self, i: int) -> dict:
        s = self.samples[i]
        return {
            "image": load_image(s.path, self.image_size),
            "mask": load_mask(s.mask, self.image_size),
            "label": s.label,
            "path": str(s.path),
            "defect": s.defect,
            "index": i,
        }
