"""The Gaussian AD head (Rippel et al., ICPR 2020, the seeds' ``003_*``) on our encoders'
feature maps: per level, one mean and one Ledoit–Wolf-shrunk covariance over every position of
the normal images' features; the map is the Mahalanobis distance of each position's feature
vector, the image score its maximum over the map.

Measured as a scoring head on the defect model's encoders (benchmarks/quality/gaussian_head.py;
docs/results/mvtec_bottle.md, textures_dev.md): it did not help on mvtec_bottle or moon_grey, so
no recipe uses it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def ledoit_wolf(x: Tensor) -> tuple[Tensor, Tensor, float]:
    """(mean, shrunk covariance, shrinkage) of the rows of ``x`` (n×d), by Ledoit and Wolf's
    formula as scikit-learn's ``LedoitWolf`` computes it (float64 inside)."""
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"ledoit_wolf needs an n×d matrix with n >= 2, got shape {tuple(x.shape)}")
    x = x.double()
    mean = x.mean(0)
    xc = x - mean
    n, d = xc.shape
    emp = xc.T @ xc / n
    mu = torch.trace(emp) / d
    x2 = xc * xc
    beta_sum = (x2.T @ x2).sum()
    delta_sum = (emp * emp).sum() * n * n
    beta = (beta_sum / n - delta_sum / n / n) / (d * n)
    delta = ((emp - mu * torch.eye(d, dtype=x.dtype)) ** 2).sum() / d
    beta = torch.minimum(beta, delta)
    # one feature: nothing to shrink towards (scikit-learn returns 0 there too)
    shrinkage = 0.0 if d == 1 or float(beta) == 0.0 else float(beta / delta)
    cov = (1.0 - shrinkage) * emp + shrinkage * mu * torch.eye(d, dtype=x.dtype)
    return mean, cov, shrinkage


class GaussianHead(nn.Module):
    """One Gaussian per feature level; ``forward(features) -> maps`` gives, for each level's
    N×C×h×w features, the N×1×h×w Mahalanobis distance of every position."""

    def __init__(self, means: list[Tensor], precisions: list[Tensor]) -> None:
        super().__init__()
        if len(means) != len(precisions):
            raise ValueError("one precision matrix per mean")
        for i, (m, p) in enumerate(zip(means, precisions)):
            self.register_buffer(f"mean{i}", m.float())
            self.register_buffer(f"precision{i}", p.float())
        self.levels = len(means)

    @classmethod
    def fit(cls, banks: list[Tensor]) -> GaussianHead:
        """From one n×C bank of normal feature vectors per level."""
        means, precisions = [], []
        for bank in banks:
            mean, cov, _ = ledoit_wolf(bank)
            means.append(mean)
            precisions.append(torch.linalg.inv(cov))
        return cls(means, precisions)

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        if len(features) != self.levels:
            raise ValueError(f"the head holds {self.levels} levels, got {len(features)} feature maps")
        maps = []
        for i, f in enumerate(features):
            mean, prec = getattr(self, f"mean{i}"), getattr(self, f"precision{i}")
            d = f.float().movedim(1, -1) - mean  # N×h×w×C
            m = ((d @ prec) * d).sum(-1).clamp_min(0).sqrt()
            maps.append(m.unsqueeze(1))
        return maps


def feature_bank(features: Tensor, per_image: int, generator: torch.Generator) -> Tensor:
    """Up to ``per_image`` positions of each image's N×C×h×w features, drawn at random, as rows."""
    rows = features.float().movedim(1, -1).flatten(1, 2)  # N×(h·w)×C
    k = min(per_image, rows.shape[1])
    pick = torch.stack([torch.randperm(rows.shape[1], generator=generator)[:k] for _ in range(rows.shape[0])])
    return torch.gather(rows, 1, pick.unsqueeze(-1).expand(-1, -1, rows.shape[2])).flatten(0, 1)
