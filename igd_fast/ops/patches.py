"""Patch ops: ``igd_fast::fold_patch_maps`` and ``igd_fast::anomaly_map``, plus the
public patch API (``PatchGrid``, ``extract_patches``, ``patch_scores``).

``patch_scores`` reuses the SSIM ops (one pass over the scales gives the values and the
per-pixel map); folding and max-pooling are kernels of their own. Kernels take the grid
as scalars (height, width, size, stride): start(i) = min(i·stride, length - size)
reproduces :class:`PatchGrid` exactly, so no position table travels to the device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor

from .. import _backends
from ..config import LOCAL, MSSSIMConfig
from ..reference import patches as ref
from .backends import patch_kernels
from .ssim import recon_terms

_MODES = ("mean", "sum", "max")


@dataclass(frozen=True)
class PatchGrid:
    """Where the patches of an image lie: the one patch-geometry type of the package.

    Edge rule: along each axis patches start at 0, stride, 2·stride, ... while they fit;
    if the last one stops short of the border, one more patch is added flush with it
    (start ``H - size``), so every pixel is covered even when ``H - size`` is not a
    multiple of the stride. Patch ``p`` of an image is row ``p // n_cols``, column
    ``p % n_cols``.

    >>> PatchGrid(40, 32, size=32, stride=16).rows
    (0, 8)
    """

    height: int
    width: int
    size: int = 32
    stride: int = 16
    rows: tuple[int, ...] = field(init=False)
    cols: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        if self.size < 1 or self.stride < 1:
            raise ValueError(f"patch size and stride must be >= 1, got {self.size} and {self.stride}")
        if self.stride > self.size:
            # pixels between patches would belong to none of them
            raise ValueError(f"stride ({self.stride}) must not exceed the patch size ({self.size})")
        if self.height < self.size or self.width < self.size:
            raise ValueError(f"image of {self.height}×{self.width} is smaller than one {self.size}×{self.size} patch")
        object.__setattr__(self, "rows", ref.grid_starts(self.height, self.size, self.stride))
        object.__setattr__(self, "cols", ref.grid_starts(self.width, self.size, self.stride))

    @property
    def n_rows(self) -> int:
        return len(self.rows)

    @property
    def n_cols(self) -> int:
        return len(self.cols)

    @property
    def count(self) -> int:
        """Patches per image (P)."""
        return self.n_rows * self.n_cols

    def start(self, index: int) -> tuple[int, int]:
        """(row, col) of the top-left pixel of patch ``index`` of an image."""
        if not 0 <= index < self.count:
            raise IndexError(f"patch index {index} out of range for {self.count} patches")
        return self.rows[index // self.n_cols], self.cols[index % self.n_cols]

    def starts(self, device: torch.device | str | None = None) -> Tensor:
        """P×2 int64 (row, col) starts of every patch of an image."""
        r = torch.tensor(self.rows, device=device)
        c = torch.tensor(self.cols, device=device)
        return torch.stack(torch.meshgrid(r, c, indexing="ij"), -1).reshape(-1, 2)

    def coverage(self, device: torch.device | str | None = None) -> Tensor:
        """H×W float32: how many patches cover each pixel (what ``mean`` divides by)."""

        def axis(starts, length):
            s = torch.tensor(starts, device=device)[:, None]
            pix = torch.arange(length, device=device)[None, :]
            return ((pix >= s) & (pix < s + self.size)).sum(0).float()

        return axis(self.rows, self.height)[:, None] * axis(self.cols, self.width)[None, :]

    def scalars(self) -> tuple[int, int, int, int]:
        """(height, width, size, stride): the grid as the kernels take it."""
        return self.height, self.width, self.size, self.stride


# ---------------------------------------------------------------- extraction


def _check_images(images: Tensor) -> None:
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"images must be a 4-D N×C×H×W tensor, got shape {tuple(images.shape)}")


def extract_patches(images: Tensor, size: int = 32, stride: int = 16) -> tuple[Tensor, PatchGrid]:
    """Every patch of an N×C×H×W batch: ((N·P)×C×size×size contiguous, grid).

    One copy of a strided view: the windows at the stride when the grid is regular, else
    all stride-1 windows indexed at the grid's starts. Differentiable (the gradient adds
    overlapping patches back).

    >>> p, g = extract_patches(torch.zeros(2, 3, 256, 256))
    >>> tuple(p.shape), g.count
    ((450, 3, 32, 32), 225)
    """
    _check_images(images)
    grid = PatchGrid(images.shape[-2], images.shape[-1], size, stride)
    n, c = images.shape[:2]
    if (grid.height - size) % stride == 0 and (grid.width - size) % stride == 0:
        # regular grid: a strided view at the grid's stride; a plain copy beats a gather
        windows = images.unfold(2, size, stride).unfold(3, size, stride).permute(0, 2, 3, 1, 4, 5)
        out = images.new_empty((n * grid.count, c, size, size))
        out.view(windows.shape).copy_(windows)  # a copy even when a view would do: never alias
        return out, grid
    windows = images.unfold(2, size, 1).unfold(3, size, 1).permute(0, 2, 3, 1, 4, 5)
    r = torch.tensor(grid.rows, device=images.device)
    col = torch.tensor(grid.cols, device=images.device)
    patches = windows[:, r[:, None], col[None, :]]  # N×nr×nc×C×s×s, the only copy
    return patches.reshape(n * grid.count, c, size, size), grid


# ---------------------------------------------------------------- scoring


def patch_scores(
    patches: Tensor,
    recon: Tensor,
    config: MSSSIMConfig = LOCAL,
    rho: float = 0.15,
    extra: Tensor | None = None,
    want_maps: bool = True,
    backend: str | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Local reconstruction score of every patch and its per-pixel error map.

    scores (N·P): rho·MAE/L + (1 - rho)(1 - MS-SSIM) (+ ``extra``, e.g. the Gaussian
    classifier's l_h per patch); maps ((N·P)×1×s×s, or None when ``want_maps`` is
    False): rho·mean_c|x - x_hat|/L + (1 - rho)(1 - MS-SSIM map). Both come from one
    pass of the SSIM kernels; gradients flow to ``recon`` (and ``patches``).
    """
    scores, maps = recon_terms(patches, recon, rho, config, want_maps, backend, what="patches and recon")
    if extra is not None:
        if extra.shape != scores.shape:
            raise ValueError(f"extra must have one value per patch {tuple(scores.shape)}, got {tuple(extra.shape)}")
        scores = scores + extra
    return scores, maps


# ---------------------------------------------------------------- fold


@torch.library.custom_op("igd_fast::fold_patch_maps", mutates_args=())
def fold_patch_maps_op(
    patch_maps: Tensor, height: int, width: int, size: int, stride: int, mode: str, backend: str
) -> Tensor:
    """The op behind :func:`fold_patch_maps`: (N·P)×C×s×s -> N×C×H×W, grid as scalars."""
    return patch_kernels(backend).fold_patch_maps(patch_maps, height, width, size, stride, mode)


@fold_patch_maps_op.register_fake
def _(patch_maps, height, width, size, stride, mode, backend):
    p = len(ref.grid_starts(height, size, stride)) * len(ref.grid_starts(width, size, stride))
    return patch_maps.new_empty((patch_maps.shape[0] // p, patch_maps.shape[1], height, width))


def _fold_setup(ctx, inputs, output):
    ctx.params = inputs[1:]


def _fold_grad(ctx, grad):
    height, width, size, stride, mode, _ = ctx.params
    if mode == "max":
        raise RuntimeError("fold_patch_maps(mode='max') is not differentiable; use 'mean' or 'sum'")
    if mode == "mean":
        grid = PatchGrid(height, width, size, stride)
        grad = grad / grid.coverage(grad.device).to(grad.dtype)
    # the adjoint of scattering patches onto the image is gathering them back
    return extract_patches(grad, size, stride)[0], None, None, None, None, None, None


fold_patch_maps_op.register_autograd(_fold_grad, setup_context=_fold_setup)


def _check_patch_maps(patch_maps: Tensor, grid: PatchGrid, what: str) -> None:
    if not isinstance(grid, PatchGrid):
        raise TypeError(f"grid must be a PatchGrid, got {type(grid).__name__}")
    if patch_maps.dim() != 4 or patch_maps.shape[-2:] != (grid.size, grid.size):
        raise ValueError(f"{what} must be (N·P)×C×{grid.size}×{grid.size}, got shape {tuple(patch_maps.shape)}")
    if patch_maps.shape[0] == 0 or patch_maps.shape[0] % grid.count:
        raise ValueError(
            f"{what} hold {patch_maps.shape[0]} patches, not a positive multiple of the grid's {grid.count}"
        )


def fold_patch_maps(patch_maps: Tensor, grid: PatchGrid, mode: str = "mean", backend: str | None = None) -> Tensor:
    """Patch maps back into N×C×H×W images.

    ``mean`` averages overlapping patches (our default), ``sum`` adds them (the
    published code's ``F.fold``: pixels covered by fewer patches weigh less), ``max``
    keeps the worst. ``mean`` and ``sum`` are differentiable w.r.t. ``patch_maps``.
    """
    _check_patch_maps(patch_maps, grid, "patch_maps")
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    b = _backends.resolve(patch_maps.device, backend)
    return fold_patch_maps_op(patch_maps.contiguous(), *grid.scalars(), mode, b)


# ---------------------------------------------------------------- max-pooled map


@torch.library.custom_op("igd_fast::anomaly_map", mutates_args=())
def anomaly_map_op(
    scores: Tensor, height: int, width: int, size: int, stride: int, backend: str
) -> tuple[Tensor, Tensor, Tensor]:
    """The op behind :func:`anomaly_map`: N×P scores -> (N×1×H×W pixel map, N image
    scores, N worst patch index), grid as scalars."""
    return tuple(patch_kernels(backend).anomaly_map(scores, height, width, size, stride))


@anomaly_map_op.register_fake
def _(scores, height, width, size, stride, backend):
    n = scores.shape[0]
    return (
        scores.new_empty((n, 1, height, width)),
        scores.new_empty((n,)),
        scores.new_empty((n,), dtype=torch.int64),
    )


class AnomalyMap(NamedTuple):
    """Result of :func:`anomaly_map`."""

    pixel_map: Tensor  # N×1×H×W, each pixel the largest score of the patches covering it
    image_score: Tensor  # N, the max over patches (s_L)
    worst_patch: Tensor  # N int64, index of the (first) worst patch within its image
    worst_start: Tensor  # N×2 int64, (row, col) of that patch's top-left pixel


def anomaly_map(patch_scores: Tensor, grid: PatchGrid, backend: str | None = None) -> AnomalyMap:
    """Max-pool per-patch scores ((N·P) or N×P) into a pixel map and image scores.

    Not differentiable (a scoring-time op): the scores are detached.
    """
    if not isinstance(grid, PatchGrid):
        raise TypeError(f"grid must be a PatchGrid, got {type(grid).__name__}")
    two_d_ok = patch_scores.dim() == 2 and patch_scores.shape[1] == grid.count
    if patch_scores.numel() == 0 or patch_scores.numel() % grid.count or not (patch_scores.dim() == 1 or two_d_ok):
        raise ValueError(
            f"patch_scores must be (N·P) or N×P with P = {grid.count}, got shape {tuple(patch_scores.shape)}"
        )
    s = patch_scores.detach().reshape(-1, grid.count).contiguous()
    b = _backends.resolve(s.device, backend)
    pixel_map, image_score, worst = anomaly_map_op(s, *grid.scalars(), b)
    starts = grid.starts(s.device)[worst]
    return AnomalyMap(pixel_map, image_score, worst, starts)


__all__ = [
    "AnomalyMap",
    "PatchGrid",
    "anomaly_map",
    "anomaly_map_op",
    "extract_patches",
    "fold_patch_maps",
    "fold_patch_maps_op",
    "patch_scores",
]
