"""igd_fast: Interpolated Gaussian Descriptor anomaly detection on fused kernels."""

from ._backends import backends
from .config import DATA_RANGE, GLOBAL, LOCAL, MSSSIMConfig
from .ops.patches import AnomalyMap, PatchGrid, anomaly_map, extract_patches, fold_patch_maps, patch_scores
from .ops.ssim import ms_ssim, ms_ssim_map, recon_error_map, recon_loss

__version__ = "0.1.0"

__all__ = [
    "AnomalyMap",
    "DATA_RANGE",
    "GLOBAL",
    "LOCAL",
    "MSSSIMConfig",
    "PatchGrid",
    "anomaly_map",
    "backends",
    "extract_patches",
    "fold_patch_maps",
    "ms_ssim",
    "ms_ssim_map",
    "patch_scores",
    "recon_error_map",
    "recon_loss",
]
