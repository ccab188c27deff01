"""What scoring returns per image: the raw result of a runner, a file that could not be read,
and the decision the post-processor adds."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ScoredImage:
    """One image's raw result; ``map`` is H×W float32 at the original resolution (None when
    not asked for, or for a variant without a map). ``terms``: each component's term."""

    index: int
    path: str | None
    score: float
    s_global: float
    s_local: float
    map: np.ndarray | None
    terms: dict[str, float] = field(default_factory=dict)


@dataclass
class Failure:
    """An image that could not be read (it is reported, not scored)."""

    index: int
    path: str
    error: str


@dataclass
class Prediction:
    """One image's result with its decision (anomalib's names): ``pred_score`` in [0, 1]
    with the calibrated threshold at 0.5, ``pred_label`` 1 = anomalous, ``anomaly_map``
    (H×W float32 at the image's size) and ``pred_mask`` (its pixels above the calibrated
    pixel threshold); ``score`` is the raw score. ``path`` None for an in-memory image."""

    path: str | None
    score: float
    pred_score: float
    pred_label: int
    anomaly_map: np.ndarray | None
    pred_mask: np.ndarray | None
    s_global: float
    s_local: float
    terms: dict[str, float] = field(default_factory=dict)
