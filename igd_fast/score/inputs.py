"""In-memory images for scoring: PIL images, numpy arrays and tensors, one or a batch, turned
into the same items the file reader makes (8-bit RGB by the package's one conversion rule,
resized bilinear to the model size, ImageNet-normalised; :mod:`igd_fast.data`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..data import array_image, image_tensor, rgb_image
from .io import Item, scoring_size

CHANNELS = (1, 2, 3, 4)


def is_path_input(x: Any) -> bool:
    """A file name, or a list of them."""
    if isinstance(x, (str, Path)):
        return True
    return isinstance(x, (list, tuple)) and bool(x) and all(isinstance(v, (str, Path)) for v in x)


def to_items(x: Any, size: int, keep_aspect: bool = False) -> tuple[list[Item], bool]:
    """(items at ``size``, whether ``x`` was one image). ``x``: a PIL image; a numpy array
    H×W, H×W×C or a batch N×H×W×C (N×C×H×W also read); a tensor C×H×W or N×C×H×W (H×W×C
    and N×H×W×C also read where the channels can only be last); or a list of single
    images. Arrays and tensors are uint8, uint16 or float in [0, 1]."""
    images, single = _split(x)
    items = []
    for i, a in enumerate(images):
        im = rgb_image(a) if isinstance(a, Image.Image) else array_image(a)
        hw = (im.height, im.width)
        items.append(Item(i, None, image_tensor(im, scoring_size(hw, size, keep_aspect)), hw, None, i))
    return items, single


def _split(x: Any) -> tuple[list, bool]:
    if isinstance(x, Image.Image):
        return [x], True
    if isinstance(x, (list, tuple)):
        if not x:
            raise ValueError("no images to score (an empty list)")
        return [a if isinstance(a, Image.Image) else _one(a) for a in x], False
    if isinstance(x, torch.Tensor) and x.dim() == 4 or isinstance(x, np.ndarray) and x.ndim == 4:
        a = _numpy(x)
        channels_first = a.shape[1] in CHANNELS and (isinstance(x, torch.Tensor) or a.shape[-1] not in CHANNELS)
        return list(a.transpose(0, 2, 3, 1) if channels_first else a), False
    return [_one(x)], True


def _one(x: Any) -> np.ndarray:
    """One image as an H×W(×C) array: a numpy array as it is, a tensor's channels first
    (torchvision's C×H×W) unless only its last axis can be channels."""
    if not isinstance(x, (np.ndarray, torch.Tensor)):
        raise TypeError(f"cannot score a {type(x).__name__}: give a path, a PIL image, a numpy array or a tensor")
    a = _numpy(x)
    if a.ndim == 3 and isinstance(x, torch.Tensor) and (a.shape[0] in CHANNELS or a.shape[-1] not in CHANNELS):
        return a.transpose(1, 2, 0)
    return a


def _numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
        return t.numpy() if t.dtype != torch.bfloat16 else t.float().numpy()
    return np.asarray(x)
