"""igd_fast: Interpolated Gaussian Descriptor anomaly detection on fused kernels."""

import os

# Idle OpenMP threads sleep instead of spin-waiting. With libgomp's default spin, a
# machine with other busy processes (or our own DataLoader workers) ran scoring ~10×
# slower on 2 threads than on 1 (README, "Threads and workers"). Only effective when
# igd_fast is imported before torch loads libgomp; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from ._backends import backends
from .config import DATA_RANGE, GLOBAL, LOCAL, MSSSIMConfig
from .ops.patches import AnomalyMap, PatchGrid, anomaly_map, extract_patches, fold_patch_maps, patch_scores
from .ops.ssim import ms_ssim, ms_ssim_map, recon_error_map, recon_loss

__version__ = "0.1.0"

# Higher layers load on first use so `import igd_fast` stays a kernels-only import.
_LAZY = {"Scorer": "igd_fast.score", "load_model": "igd_fast.checkpoint"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'igd_fast' has no attribute {name!r}")


__all__ = [
    "AnomalyMap",
    "DATA_RANGE",
    "GLOBAL",
    "LOCAL",
    "MSSSIMConfig",
    "PatchGrid",
    "Scorer",
    "anomaly_map",
    "backends",
    "extract_patches",
    "fold_patch_maps",
    "load_model",
    "ms_ssim",
    "ms_ssim_map",
    "patch_scores",
    "recon_error_map",
    "recon_loss",
]
