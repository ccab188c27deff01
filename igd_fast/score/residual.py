"""Map statistics fitted on normal images: the residual's channel Gaussian and per-position
standardisation (the scoring recipe's ``map_term="maha"`` and ``map_position=True``).

Channel Gaussian: the residual r = x - x_hat at a pixel is a C-vector; over the pixels of
the calibration normals it has mean m and covariance S. The "maha" map is the squared
Mahalanobis distance (r - m)^T (S + ridge·tr(S)/C·I)^-1 (r - m) per pixel. It weighs each
direction of the residual by how much it varies on normals: on grey textures (R = G = B)
the AE's residual is almost all grey, so any colour in it (a stain, a coloured scratch)
stands out, where mean_c |r| adds it to the texture's grey residual. The ridge keeps the
inverse bounded when a direction never varies on normals.

Position statistics: the final map of normal images is not the same everywhere (fewer
patches cover the borders, objects have parts that always reconstruct worse); each
position is standardised by the calibration normals' mean and standard deviation there.
Both are kept on a grid of at most ``POSITION_GRID``² cells (area-averaged, then
bilinearly resized to each map), which smooths the estimates and fits any image size.

Reconstruction colour (``recon_colour``): on grey data (every calibration normal has R = G = B)
the AE never sees colour, so the colour of its output is untrained, and the maha map weighs
colour ~1/RIDGE times the grey residual. "grey" replaces the reconstruction by its nearest
grey image (the channel mean in pixel space) before the residual is taken, so the residual's
colour is the input's own (a stain) and nothing of the AE's. "damped" keeps the AE's colour
(its departure from that grey image) scaled by COLOUR_DAMPING = sqrt(RIDGE): its squared
distance then weighs ~1 against the grey residual's instead of ~1/RIDGE, so an AE that
puts colour on a defect it cannot reconstruct still marks it, and untrained colour on a
normal shadow no longer dominates the map.

Excess image score: with t the q-quantile of the calibration normals' final-map pixels,
an image scores mean(max(map - t, 0)) over its pixels (``image_score="map-excess"``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

RIDGE = 1e-2  # fraction of the mean channel variance added to the covariance's diagonal
COLOUR_DAMPING = math.sqrt(RIDGE)  # recon_colour "damped": the AE's colour scaled so maha weighs it ~1
POSITION_GRID = 32


class ChannelAccumulator:
    """Streaming mean and covariance of the C-vectors of N×C×H×W residuals (float64)."""

    def __init__(self) -> None:
        self.n = 0
        self.s1: Tensor | None = None
        self.s2: Tensor | None = None

    def add(self, r: Tensor) -> None:
        v = r.detach().double().movedim(1, -1).reshape(-1, r.shape[1])
        s1, s2 = v.sum(0), v.T @ v
        self.s1, self.s2 = (s1, s2) if self.s1 is None else (self.s1 + s1, self.s2 + s2)
        self.n += v.shape[0]

    def finish(self) -> dict:
        if self.n < 2:
            raise ValueError("the channel statistics need at least two residual pixels")
        mean = self.s1 / self.n
        cov = (self.s2 - self.n * torch.outer(mean, mean)) / (self.n - 1)
        c = cov.shape[0]
        reg = cov + RIDGE * max(float(torch.trace(cov)) / c, 1e-12) * torch.eye(c, dtype=cov.dtype)
        return {"mean": mean.tolist(), "precision": torch.linalg.inv(reg).tolist(), "pixels": self.n}


def channel_distance(r: Tensor, stats: dict) -> Tensor:
    """Squared Mahalanobis distance per pixel of N×C×H×W residuals -> N×1×H×W (float32)."""
    mean = torch.as_tensor(stats["mean"], dtype=torch.float32, device=r.device)
    prec = torch.as_tensor(stats["precision"], dtype=torch.float32, device=r.device)
    if r.shape[1] != mean.numel():
        raise ValueError(f"channel statistics for {mean.numel()} channels, residual has {r.shape[1]}")
    d = r.float() - mean.view(1, -1, 1, 1)
    return torch.einsum("nchw,cd,ndhw->nhw", d, prec, d).unsqueeze(1)


class PositionAccumulator:
    """Per-cell mean and std of 2-D maps pooled onto a ``POSITION_GRID`` grid."""

    def __init__(self, grid: int = POSITION_GRID) -> None:
        self.grid = grid
        self.n = 0
        self.s1: Tensor | None = None
        self.s2: Tensor | None = None

    def _pool(self, m: Tensor) -> Tensor:
        h, w = m.shape[-2:]
        return F.adaptive_avg_pool2d(m.double().view(1, 1, h, w), (min(self.grid, h), min(self.grid, w)))[0, 0]

    def add(self, m: Tensor) -> None:
        p, p2 = self._pool(m), self._pool(m.double() ** 2)
        if self.s1 is not None and p.shape != self.s1.shape:
            # a smaller image than the first: every map on the smallest grid seen
            g = tuple(min(a, b) for a, b in zip(p.shape, self.s1.shape, strict=True))
            self.s1, self.s2, p, p2 = (F.adaptive_avg_pool2d(t[None, None], g)[0, 0] for t in (self.s1, self.s2, p, p2))
        self.s1, self.s2 = (p, p2) if self.s1 is None else (self.s1 + p, self.s2 + p2)
        self.n += 1

    def finish(self) -> dict:
        if self.n < 2:
            raise ValueError("per-position statistics need at least two calibration images")
        mean = self.s1 / self.n
        var = ((self.s2 - self.n * mean * mean) / (self.n - 1)).clamp_min(0)
        sd = var.sqrt()
        # a cell that never varies would divide by ~0: floor at a small part of the typical spread
        floor = max(float(sd.mean()) * 1e-3, 1e-12)
        return {"mean": mean.tolist(), "std": sd.clamp_min(floor).tolist(), "images": self.n}


def standardise_positions(m: Tensor, stats: dict) -> Tensor:
    """(map - mean) / std per position of a 2-D (or N×1×H×W) map, the grid resized bilinearly."""
    mean = torch.as_tensor(stats["mean"], dtype=torch.float32, device=m.device)[None, None]
    sd = torch.as_tensor(stats["std"], dtype=torch.float32, device=m.device)[None, None]
    size = m.shape[-2:]
    mean, sd = (F.interpolate(t, size=size, mode="bilinear", align_corners=False) for t in (mean, sd))
    return ((m.float() - mean.view(size) if m.dim() == 2 else m.float() - mean) /
            (sd.view(size) if m.dim() == 2 else sd))  # fmt: skip


def valid_stats(st: object, keys: tuple[str, ...]) -> bool:
    """A cached statistics record holds finite numbers (nested lists) under ``keys``."""

    def finite(v) -> bool:
        if isinstance(v, list):
            return bool(v) and all(finite(u) for u in v)
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    return isinstance(st, dict) and all(finite(st.get(k)) for k in keys)


def excess_level(pixels: np.ndarray, q: float) -> float:
    """The q-quantile of the calibration normals' map pixels (numpy's linear rule)."""
    if pixels.size == 0:
        raise ValueError("the excess level needs at least one map pixel")
    return float(np.quantile(pixels.astype(np.float64, copy=False), q))


def map_excess(m: np.ndarray, level: float) -> float:
    """mean(max(m - level, 0)) over the pixels of one map (float64 sum)."""
    return float(np.maximum(m.astype(np.float64, copy=False) - level, 0.0).mean())


def grey_projection(x_hat: Tensor, mean: Sequence[float], std: Sequence[float], keep: float = 0.0) -> Tensor:
    """The nearest grey image (R = G = B, the channel mean in pixel space) to each of
    N×C×H×W images normalised by per-channel ``mean`` / ``std``, normalised back; with
    ``keep`` > 0, that grey image plus ``keep`` times the image's colour (its departure
    from it): 0 is grey, 1 the image itself."""
    m = torch.tensor(mean, dtype=x_hat.dtype, device=x_hat.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x_hat.dtype, device=x_hat.device).view(1, -1, 1, 1)
    pix = x_hat * s + m
    grey = pix.mean(1, keepdim=True)
    if keep:
        grey = grey + keep * (pix - grey)
    return (grey - m) / s
