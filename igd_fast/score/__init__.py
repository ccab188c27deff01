"""Batch scoring with a trained global + local IGD pair: image scores, per-pixel maps at
the original resolution, the calibrated threshold and heat-map overlays."""

from .io import list_images, overlay, save_overlay
from .scorer import BatchScores, Failure, ScoredImage, Scorer
from .threshold import DEFAULT_ALPHA, THRESHOLD_JSON, conformal_threshold

__all__ = [
    "DEFAULT_ALPHA",
    "THRESHOLD_JSON",
    "BatchScores",
    "Failure",
    "ScoredImage",
    "Scorer",
    "conformal_threshold",
    "list_images",
    "overlay",
    "save_overlay",
]
