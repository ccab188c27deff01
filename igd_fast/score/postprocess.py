"""The post-processor: the calibrated decision state of a model directory and what it turns a
raw score and map into (anomalib's model / post-processor split).

It holds the image threshold, the score scale of ``pred_score``, the pixel threshold of
``pred_mask`` and the heat-map range, all fitted on validation normals by
:class:`igd_fast.score.calibrate.Calibrator` (rules in :mod:`igd_fast.score.threshold`) and
kept in ``threshold.json``. As an ``nn.Module`` its ``forward`` is what an exported graph
runs after the scoring module; :meth:`predict` is the same decision for a scored image.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .results import Prediction, ScoredImage
from .threshold import logistic, normalise_scores, score_scale


class PostProcessor(nn.Module):
    """Raw scores and maps -> ``pred_score``, ``pred_label``, ``pred_mask`` (score > threshold
    is anomalous; pred_score 0.5 at the threshold). ``pixel_threshold`` / ``map_range`` None:
    not calibrated (a threshold given by hand without a calibration)."""

    def __init__(self, threshold: float, scale: float, pixel_threshold: float | None = None,
                 map_range: tuple[float, float] | None = None, rule: str | None = None) -> None:  # fmt: skip
        super().__init__()
        if not (math.isfinite(threshold) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"a post-processor needs a finite threshold and a positive scale, got {threshold} and "
                             f"{scale}")  # fmt: skip
        self.threshold, self.scale = float(threshold), float(scale)
        self.pixel_threshold = None if pixel_threshold is None else float(pixel_threshold)
        self.map_range = map_range
        self.rule = rule

    @classmethod
    def from_record(cls, rec: Mapping) -> PostProcessor:
        """The post-processor of a calibration record (threshold.json)."""
        lo, hi = float(rec["map_low"]), float(rec["map_high"])
        # heat-maps: the median normal pixel at 0, the largest normal pixel at 0.5
        return cls(float(rec["threshold"]), float(rec["score_scale"]), float(rec["pixel_threshold"]),
                   (lo, lo + 2.0 * max(hi - lo, 1e-6)), rec.get("rule"))  # fmt: skip

    def with_threshold(self, threshold: float, rule: str = "given explicitly") -> PostProcessor:
        """This decision with another image threshold (the calibrated scale and pixel threshold kept)."""
        return PostProcessor(threshold, self.scale, self.pixel_threshold, self.map_range, rule)

    @classmethod
    def given(cls, threshold: float, rule: str = "given explicitly") -> PostProcessor:
        """A threshold without a calibration: the scale falls back to |threshold| (or 1)."""
        return cls(threshold, score_scale([], threshold), rule=rule)

    def pred_score(self, scores: Sequence[float] | np.ndarray) -> np.ndarray:
        return normalise_scores(scores, self.threshold, self.scale)

    def pred_label(self, scores: Sequence[float] | np.ndarray) -> np.ndarray:
        # NaN is never "normal": a NaN score is labelled anomalous
        return (~(np.asarray(scores, dtype=np.float64) <= self.threshold)).astype(np.int64)

    def pred_mask(self, amap: np.ndarray | None) -> np.ndarray | None:
        """Pixels above the calibrated pixel threshold (None without a map or a calibration)."""
        if amap is None or self.pixel_threshold is None:
            return None
        return amap > self.pixel_threshold

    def predict(self, r: ScoredImage) -> Prediction:
        return Prediction(r.path, r.score, float(self.pred_score([r.score])[0]), int(self.pred_label([r.score])[0]),
                          r.map, self.pred_mask(r.map), r.s_global, r.s_local, dict(r.terms))  # fmt: skip

    def forward(self, score: Tensor) -> tuple[Tensor, Tensor]:
        """(pred_score in the score's dtype, pred_label int64) of N raw scores."""
        label = ~(score <= self.threshold)  # NaN is never "normal": a NaN score is labelled anomalous
        return logistic(score, self.threshold, self.scale), label.to(torch.int64)

    @property
    def pixel_scale(self) -> float:
        """The width of the heat-map range: the span of ``anomaly_map`` in [0, 1] (1 uncalibrated)."""
        return 1.0 if self.map_range is None else float(self.map_range[1] - self.map_range[0])

    def map_01(self, m: Tensor) -> Tensor:
        """Maps in [0, 1] with the pixel threshold at 0.5 (anomalib's ``anomaly_map``):
        (map - pixel_threshold) / pixel_scale + 0.5, clipped; the exported graph's output."""
        return ((m - self._pixel_threshold()) / self.pixel_scale + 0.5).clamp(0.0, 1.0)

    def mask(self, m: Tensor) -> Tensor:
        """Boolean maps, pixels above the pixel threshold (:meth:`pred_mask` on tensors)."""
        return m > self._pixel_threshold()

    def _pixel_threshold(self) -> float:
        if self.pixel_threshold is None:
            raise ValueError("no pixel threshold: this decision was given by hand, not calibrated")
        return self.pixel_threshold

    def record(self) -> dict:
        return {"threshold": self.threshold, "score_scale": self.scale, "pixel_threshold": self.pixel_threshold,
                "map_range": None if self.map_range is None else list(self.map_range), "rule": self.rule}  # fmt: skip

