"""Connected components of binary masks (8-connectivity) for AUPRO's ground-truth regions:
``scipy.ndimage.label``, the labelling the MVTec AD evaluation code uses (it replaced a
hand-written torch one that was 7-10× slower on 10 M pixels; tests/test_components.py shows
both give the same labels, and so does ``skimage.measure.label``)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity: diagonal neighbours join


def label_components(masks: Tensor) -> tuple[Tensor, int]:
    """Label the 8-connected components of each mask in an N×H×W (or H×W) batch.

    Returns (labels int64 of the same shape, 0 = background, 1..n numbered over the
    whole batch in raster order, n). Components never span two images.
    """
    from scipy import ndimage

    squeeze = masks.dim() == 2
    m = (masks.reshape(1, *masks.shape) if squeeze else masks).detach().cpu() > 0
    if m.dim() != 3:
        raise ValueError(f"masks must be H×W or N×H×W, got shape {tuple(masks.shape)}")
    out = np.zeros(m.shape, dtype=np.int64)
    count = 0
    for i, mask in enumerate(m.numpy()):
        lab, n = ndimage.label(mask, structure=EIGHT)
        out[i] = np.where(lab > 0, lab + count, 0)
        count += int(n)
    labels = torch.from_numpy(out)
    return (labels[0] if squeeze else labels), count
