"""Map filters the scoring applies after the networks: Gaussian smoothing with symmetric edges."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def gaussian_smooth(maps: Tensor, sigma: float, truncate: float = 4.0) -> Tensor:
    """N×C×H×W maps blurred by a Gaussian of ``sigma`` pixels, separably, with the
    kernel cut at ``truncate``·sigma and symmetric edges (d c b a | a b c d): the same
    as ``scipy.ndimage.gaussian_filter(m, sigma, mode="reflect", truncate=truncate)``
    on each H×W plane."""
    if sigma <= 0:
        return maps
    r = int(truncate * sigma + 0.5)
    t = torch.arange(-r, r + 1, device=maps.device, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(maps.dtype)
    n, c, h, w = maps.shape
    x = maps.reshape(n * c, 1, h, w)
    for dim, size in ((2, h), (3, w)):
        x = x.index_select(dim, _symmetric_index(size, r, maps.device))
        kk = k.view(1, 1, -1, 1) if dim == 2 else k.view(1, 1, 1, -1)
        x = F.conv2d(x, kk)
    return x.reshape(n, c, h, w)


def _symmetric_index(size: int, r: int, device) -> Tensor:
    # indices -r .. size+r-1 folded back symmetrically (period 2·size), any r; the period as
    # a tensor, so an exported graph takes it from the map's (dynamic) size
    i = torch.arange(-r, size + r, device=device)
    i = torch.remainder(i, torch.full((), 2 * size, dtype=i.dtype, device=device))
    return torch.where(i >= size, 2 * size - 1 - i, i)
