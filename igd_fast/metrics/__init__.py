"""Evaluation metrics for anomaly detection and localisation (SPEC section 5).

Torch implementations, sort-based so that the pooled pixel metrics handle millions of
pixels in one pass. They know nothing of models: inputs are scores/maps and labels/masks.
Convention everywhere: a larger score means "more anomalous", label 1 = anomalous.
"""

from .classification import accuracy, auroc, f1_max, f1_score, roc_curve
from .components import label_components
from .localisation import aupro, per_image_pixel_auroc, pixel_auroc, pixel_f1_max, pro_curve

__all__ = [
    "accuracy",
    "aupro",
    "auroc",
    "f1_max",
    "f1_score",
    "label_components",
    "per_image_pixel_auroc",
    "pixel_auroc",
    "pixel_f1_max",
    "pro_curve",
    "roc_curve",
]
