"""igd_fast: Interpolated Gaussian Descriptor anomaly detection on fused kernels."""

from ._backends import backends
from .config import DATA_RANGE, GLOBAL, LOCAL, MSSSIMConfig
from .ops.ssim import ms_ssim, ms_ssim_map, recon_error_map, recon_loss

__version__ = "0.1.0"

__all__ = [
    "DATA_RANGE",
    "GLOBAL",
    "LOCAL",
    "MSSSIMConfig",
    "backends",
    "ms_ssim",
    "ms_ssim_map",
    "recon_error_map",
    "recon_loss",
]
