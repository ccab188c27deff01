"""Data: the MVTec AD layout reader and a synthetic MVTec-layout generator.

* :class:`MVTecDataset` (``split`` = train | val | train_all | test) yields dicts with
  ``image`` (3×S×S, ImageNet-normalised), ``mask``, ``label``, ``path``, ``defect``.
* :func:`list_train_files`, :func:`list_test_samples`, :func:`split_train_val` (deterministic
  validation split of train/good), :func:`load_image`, :func:`load_mask`.
* :func:`resolve_layout` -> :class:`Layout`: MVTec AD, MVTec LOCO AD (mask folders
  OR-ed, validation/good) or an anomalib-style Folder layout behind one interface.
* :func:`make_synthetic_mvtec` writes a tiny dataset of real PNG files.
"""

from .layouts import Layout, resolve_layout
from .mvtec import (
    IMAGE_EXTENSIONS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    LAYOUT,
    CorruptImageError,
    DataLayoutError,
    MVTecDataset,
    Sample,
    array_image,
    decode_rgb,
    image_size_of,
    image_tensor,
    imagenet_normalise,
    imagenet_pixels,
    images_under,
    list_test_samples,
    list_train_files,
    list_validation_files,
    load_image,
    load_mask,
    mask_size_mismatches,
    open_rgb,
    rgb_image,
    split_train_val,
    working_size,
)
from .synthetic import make_synthetic_mvtec

__all__ = [
    "IMAGE_EXTENSIONS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LAYOUT",
    "CorruptImageError",
    "DataLayoutError",
    "Layout",
    "MVTecDataset",
    "Sample",
    "array_image",
    "decode_rgb",
    "image_size_of",
    "image_tensor",
    "imagenet_normalise",
    "imagenet_pixels",
    "images_under",
    "mask_size_mismatches",
    "open_rgb",
    "rgb_image",
    "working_size",
    "load_image",
    "load_mask",
    "make_synthetic_mvtec",
    "split_train_val",
    "list_test_samples",
    "list_train_files",
    "list_validation_files",
    "resolve_layout",
]
