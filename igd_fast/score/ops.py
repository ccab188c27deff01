"""The patch and reconstruction ops a scoring component calls, in two interchangeable sets:
``FAST`` (the package's kernels, by backend) and ``REFERENCE`` (plain PyTorch functions, no
custom ops: what an exporter can trace). Both take and return the same shapes."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from ..config import MSSSIMConfig
from ..ops import patches as fast
from ..ops.patches import PatchGrid
from ..reference import patches as ref
from .resample import antialias_resize


@dataclass(frozen=True)
class FastOps:
    """The kernels (``backend`` None: by device / IGD_FAST_BACKEND)."""

    backend: str | None = None

    def patches(self, x: Tensor, size: int, stride: int) -> tuple[Tensor, PatchGrid]:
        return fast.extract_patches(x, size, stride)

    def resize(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        """Images read for another component, at this one's size (antialiased bilinear)."""
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)

    def fold(self, maps: Tensor, grid: PatchGrid) -> Tensor:
        return fast.fold_patch_maps(maps, grid, "mean", self.backend)

    def recon(self, x: Tensor, x_hat: Tensor, cfg: MSSSIMConfig, rho: float, extra: Tensor,
              want_map: bool) -> tuple[Tensor, Tensor | None]:  # fmt: skip
        return fast.patch_scores(x, x_hat, cfg, rho, extra, want_map, self.backend)


@dataclass(frozen=True)
class ReferenceOps:
    """The pure-PyTorch reference functions (export)."""

    def patches(self, x: Tensor, size: int, stride: int) -> tuple[Tensor, PatchGrid]:
        return ref.gather_patches(x, size, stride), PatchGrid(x.shape[-2], x.shape[-1], size, stride)

    def resize(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        # gathered taps, not an antialiased Resize node (OpenVINO's differs by up to 0.44)
        return antialias_resize(x, size)

    def fold(self, maps: Tensor, grid: PatchGrid) -> Tensor:
        return ref.fold_patch_maps(maps, *grid.scalars(), "mean")

    def recon(self, x: Tensor, x_hat: Tensor, cfg: MSSSIMConfig, rho: float, extra: Tensor,
              want_map: bool) -> tuple[Tensor, Tensor | None]:  # fmt: skip
        s, m = ref.patch_scores(x, x_hat, cfg, rho, extra)
        return s, (m if want_map else None)


FAST = FastOps()
REFERENCE = ReferenceOps()
