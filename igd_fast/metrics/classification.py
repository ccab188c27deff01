"""Image-level metrics: ROC curve, AUROC, accuracy and F1 at a threshold, F1Max."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

ArrayLike = Tensor | np.ndarray | Sequence[float]


def as_flat(x: ArrayLike, dtype: torch.dtype | None = None) -> Tensor:
    """Any array-like as a flat CPU tensor (no copy when it already is one)."""
    t = x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))
    t = t.detach().reshape(-1).cpu()
    return t if dtype is None else t.to(dtype)


def _check(scores: Tensor, labels: Tensor) -> None:
    if scores.numel() != labels.numel():
        raise ValueError(f"{scores.numel()} scores but {labels.numel()} labels")
    if scores.numel() == 0:
        raise ValueError("no samples")
    if not torch.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf")


def binary_clf_curve(scores: ArrayLike, labels: ArrayLike) -> tuple[Tensor, Tensor, Tensor]:
    """(fps, tps, thresholds) at every distinct score, highest threshold first.

    Tied scores share one point, which is what makes AUROC count a tie as half a
    correct pair (as scikit-learn does). Counts are float64 so cumulative sums over
    millions of pixels stay exact.
    """
    s = as_flat(scores)
    y = as_flat(labels)
    _check(s, y)
    s = s.to(torch.float64) if not s.is_floating_point() else s
    # ties are grouped below, so sort stability does not matter (and costs time)
    s_sorted, order = torch.sort(s, descending=True)
    y_sorted = (y[order] > 0).to(torch.float64)
    # last index of each run of equal scores
    distinct = torch.nonzero(s_sorted[1:] != s_sorted[:-1]).reshape(-1)
    idx = torch.cat([distinct, torch.tensor([s_sorted.numel() - 1])])
    tps = torch.cumsum(y_sorted, 0)[idx]
    fps = (idx + 1).to(torch.float64) - tps
    return fps, tps, s_sorted[idx]


def roc_curve(scores: ArrayLike, labels: ArrayLike) -> tuple[Tensor, Tensor, Tensor]:
    """(fpr, tpr, thresholds) like ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``.

    The first point is (0, 0) at threshold +inf; a sample is predicted anomalous when
    its score is >= the threshold.
    """
    fps, tps, thr = binary_clf_curve(scores, labels)
    if tps[-1] == 0 or fps[-1] == 0:
        raise ValueError("ROC needs both classes among the labels")
    zero = fps.new_zeros(1)
    fpr = torch.cat([zero, fps]) / fps[-1]
    tpr = torch.cat([zero, tps]) / tps[-1]
    thr = torch.cat([thr.new_full((1,), float("inf")), thr])
    return fpr, tpr, thr


def trapezoid(x: Tensor, y: Tensor, x_max: float | None = None) -> float:
    """Area under the piecewise-linear curve y(x) (x non-decreasing), optionally only up
    to ``x_max`` with y linearly interpolated there (the AUPRO convention)."""
    x = x.to(torch.float64)
    y = y.to(torch.float64)
    if x_max is not None:
        keep = x <= x_max
        n_keep = int(keep.sum())
        if n_keep < x.numel():
            # interpolate the point where the curve crosses x_max
            x0, x1 = x[n_keep - 1], x[n_keep]
            y0, y1 = y[n_keep - 1], y[n_keep]
            t = (x_max - x0) / (x1 - x0) if x1 > x0 else torch.zeros((), dtype=torch.float64)
            y_at = y0 + t * (y1 - y0)
            x = torch.cat([x[:n_keep], x.new_tensor([x_max])])
            y = torch.cat([y[:n_keep], y_at.reshape(1)])
    return float(torch.trapezoid(y, x))


def auroc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Area under the ROC curve; ties count half, exactly as ``sklearn.metrics.roc_auc_score``."""
    fpr, tpr, _ = roc_curve(scores, labels)
    return trapezoid(fpr, tpr)


def accuracy(scores: ArrayLike, labels: ArrayLike, threshold: float) -> float:
    """Fraction classified correctly when "anomalous" means score > threshold.

    Strictly greater, so a threshold set to the largest validation-normal score labels
    every validation normal as normal.
    """
    s = as_flat(scores, torch.float64)
    y = as_flat(labels) > 0
    _check(s, y)
    return float(((s > threshold) == y).to(torch.float64).mean())


def f1_score(scores: ArrayLike, labels: ArrayLike, threshold: float) -> float:
    """F1 of the anomalous class when "anomalous" means score > threshold (as
    :func:`accuracy`); 0 when nothing is predicted or labelled anomalous."""
    s = as_flat(scores, torch.float64)
    y = as_flat(labels) > 0
    _check(s, y)
    if not y.any():
        raise ValueError("F1 needs at least one anomalous label")
    pred = s > threshold
    tp = float((pred & y).sum())
    return 2.0 * tp / (float(pred.sum()) + float(y.sum()))


def f1_max(scores: ArrayLike, labels: ArrayLike) -> tuple[float, float]:
    """(max F1 over every threshold of the precision-recall curve, the threshold that
    reaches it), anomalib's F1Max.

    At a threshold t ("anomalous" = score >= t, the PR curve's convention) F1 is
    2·TP / (TP + FP + P), P the number of anomalous labels; tied scores move together
    (one point per distinct score). Among equal maxima the highest threshold is returned.
    """
    fps, tps, thr = binary_clf_curve(scores, labels)
    if tps[-1] == 0:
        raise ValueError("F1Max needs at least one anomalous label")
    f1 = 2.0 * tps / (tps + fps + tps[-1])
    i = int(torch.argmax(f1))  # first maximum = highest threshold
    return float(f1[i]), float(thr[i])
