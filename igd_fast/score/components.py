"""The trained components of a model directory, each behind one interface: images at the
scoring size in, a per-image term and a map at the component's own resolution out (:class:`Terms`).

Today's components are IGD's two models (SPEC section 1):
  ``global`` (:class:`ImageModel`, ``global.pt``): l_r + w·l_h of the whole image and its map;
  ``local`` (:class:`PatchModel`, ``local.pt``): the max (or top-k mean) over patches of that
        term, and the patch maps folded back (overlaps averaged), at the local model's size.
With ``map_term="maha"`` a component's map is the C-channel residual x - x_hat (smoothed by
``residual_sigma``): the scoring module measures it with the statistics it was calibrated with.

A new kind of trained part is one :class:`Component` subclass (its ``kind``, ``file``,
``load`` and ``forward``) added to :data:`COMPONENTS`; the scoring module combines every
component's term and map by the recipe.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from ..checkpoint import load_defect_model, load_model, model_files
from ..data import IMAGENET_MEAN, IMAGENET_STD
from ..models.defect import flip_passes
from ..models.fold import fold_batchnorm
from ..models.polyphase import fuse_upsampling
from ..models.terms import latent_term
from .maps import gaussian_smooth
from .ops import FAST, REFERENCE, FastOps
from .residual import COLOUR_DAMPING, grey_projection
from .tiling import Tiler

# patches per local-model forward pass: one pass over a default batch's 3,600 patches
# ran fastest of 225/450/900/1800/4096 at width 64, fp32 and bf16, on the 2-core EPYC VM
# (benchmarks/test_bench_scoring.py::test_bench_patch_chunk; README); smaller chunks bound
# the activation memory (fp32, 16 images: +0.9 GB at 4096 against +0.45 GB at 1800)
DEFAULT_PATCH_CHUNK = 4096
# how much of the reconstruction's colour the residual maps keep (recon_colour_used)
COLOUR_KEEP = {"grey": 0.0, "damped": COLOUR_DAMPING}


class Terms(NamedTuple):
    """One component's output for N images."""

    score: Tensor  # N, the per-image term
    map: Tensor | None  # N×C×h×w at the component's resolution (C > 1: a residual to measure), or None


@dataclass(frozen=True)
class TermOptions:
    """What the recipe asks of a component (see :mod:`igd_fast.score.recipe`)."""

    latent_weight: float = 1.0
    map_term: str = "lr"
    residual_sigma: float = 0.0
    recon_colour: str = "rgb"  # what recon_colour decided: "rgb", "grey" or "damped"
    local_topk: int = 1

    @classmethod
    def of(cls, recipe, recon_colour: str) -> TermOptions:
        return cls(recipe["latent_weight"], recipe["map_term"], recipe["residual_sigma"], recon_colour,
                   recipe["local_topk"])  # fmt: skip


@dataclass(frozen=True)
class LoadOptions:
    """How networks are prepared for scoring (the same function up to float rounding)."""

    fold_bn: bool = True  # BatchNorm folded into the convolutions (tests/test_fold.py)
    fuse_upsample: bool = True  # nearest-2x upsample + 3x3 conv as one polyphase conv (tests/test_polyphase.py)
    memory_format: torch.memory_format = torch.channels_last
    patch_chunk: int = DEFAULT_PATCH_CHUNK
    backend: str | None = None  # the kernels' backend (None: by device / IGD_FAST_BACKEND)


class Component(nn.Module):
    """A trained part of a model directory: ``forward(x, want_map) -> Terms`` for N×3×S×S
    ImageNet-normalised images at the scoring size S."""

    kind: ClassVar[str]
    file: ClassVar[str]
    keeps_aspect: ClassVar[bool] = False  # images are read at their own aspect for it
    residual_map: ClassVar[bool] = True  # its map under map_term "maha" is a residual to measure

    @classmethod
    def load(cls, path: Path, device: torch.device, terms: TermOptions, how: LoadOptions) -> Component:
        raise NotImplementedError

    def forward(self, x: Tensor, want_map: bool = True) -> Terms:
        raise NotImplementedError

    @property
    def has_map(self) -> bool:
        """Whether ``forward`` gives a map."""
        raise NotImplementedError

    @property
    def image_size(self) -> int:
        """The size images are read at for this component."""
        raise NotImplementedError

    def with_networks(self, wrap: Callable[[nn.Module], nn.Module]) -> Component:
        """A copy whose networks are ``wrap(networks)`` (bf16, compiled), the rest shared."""
        raise NotImplementedError

    def exportable(self) -> Component:
        """A copy an exporter can trace (plain PyTorch ops, no data-dependent loops)."""
        raise NotImplementedError


class ImageModel(Component):
    """The global IGD model: the whole image is one input of its network."""

    kind, file = "global", "global.pt"

    def __init__(self, model: nn.Module, terms: TermOptions, memory_format=torch.channels_last,
                 ops: Any = FAST) -> None:  # fmt: skip
        super().__init__()
        self.model = model
        self.options = terms
        self.memory_format = memory_format
        self.ops = ops

    @classmethod
    def load(cls, path: Path, device: torch.device, terms: TermOptions, how: LoadOptions) -> Component:
        model = load_model(path, device)
        if model.config.kind != cls.kind:
            raise ValueError(f"{path} holds a {model.config.kind} model, not a {cls.kind} one")
        model = fold_batchnorm(model) if how.fold_bn else model
        model = fuse_upsampling(model) if how.fuse_upsample else model
        return cls.build(model.to(memory_format=how.memory_format), terms, how)

    @classmethod
    def build(cls, model: nn.Module, terms: TermOptions, how: LoadOptions) -> Component:
        return cls(model, terms, how.memory_format, FastOps(how.backend))

    @property
    def config(self):
        return self.model.config

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def has_map(self) -> bool:
        return self.config.method.recon in ("msssim", "mse")

    def forward(self, x: Tensor, want_map: bool = True) -> Terms:
        size = self.config.image_size
        if tuple(x.shape[-2:]) != (size, size):  # read for another component (at its aspect)
            x = self.ops.resize(x, (size, size))
        s, m = self.terms(x, want_map)
        return Terms(s, self._smooth(m))

    def terms(self, x: Tensor, want_map: bool) -> tuple[Tensor, Tensor | None]:
        """The variant's per-sample term l_r + latent_weight·l_h of inputs ``x`` and its map
        (``map_term``: the l_r map, its absolute-error part, or the residual for maha)."""
        o, cfg = self.options, self.config
        z, x_hat = self.model(x.contiguous(memory_format=self.memory_format))
        extra = latent_term(self.model, z) * o.latent_weight
        if cfg.method.recon == "msssim":
            s, m = self.ops.recon(x, x_hat.contiguous(), cfg.msssim(), cfg.rho, extra, want_map and o.map_term == "lr")
            if want_map and o.map_term == "abs":
                m = (x.float() - self._map_recon(x_hat)).abs().mean(1, keepdim=True) / cfg.data_range
        elif cfg.method.recon == "mse":
            err = (x.float() - x_hat.float()).pow(2)
            s, m = err.mean((1, 2, 3)) + extra, (err.mean(1, keepdim=True) if want_map else None)
        else:
            return extra, None
        if want_map and o.map_term == "maha":
            m = x.float() - self._map_recon(x_hat)
        return s, m

    def _map_recon(self, x_hat: Tensor) -> Tensor:
        # the residual maps' reconstruction, its colour as recon_colour decided (the terms keep the model's own)
        keep = COLOUR_KEEP.get(self.options.recon_colour)
        x_hat = x_hat.float()
        return x_hat if keep is None else grey_projection(x_hat, IMAGENET_MEAN, IMAGENET_STD, keep)

    def _smooth(self, m: Tensor | None) -> Tensor | None:
        # maha: noise averages out of the residual before it is measured, a defect's colour does not
        if m is None or self.options.map_term != "maha":
            return m
        return gaussian_smooth(m, self.options.residual_sigma)

    def with_networks(self, wrap: Callable[[nn.Module], nn.Module]) -> Component:
        out = copy.copy(self)
        out._modules = dict(self._modules)
        out.model = wrap(self.model)
        return out

    def with_ops(self, ops: Any) -> Component:
        out = copy.copy(self)
        out._modules = dict(self._modules)
        out.ops = ops
        return out

    def exportable(self) -> Component:
        return self.with_ops(REFERENCE)


class PatchModel(ImageModel):
    """The local IGD model: every patch of the image (at the local model's size) is one input."""

    kind, file = "local", "local.pt"

    def __init__(self, model: nn.Module, terms: TermOptions, memory_format=torch.channels_last, ops: Any = FAST,
                 patch_chunk: int | None = DEFAULT_PATCH_CHUNK) -> None:  # fmt: skip
        super().__init__(model, terms, memory_format, ops)
        self.patch_chunk = patch_chunk  # None: every patch in one pass (export)

    @classmethod
    def build(cls, model: nn.Module, terms: TermOptions, how: LoadOptions) -> Component:
        return cls(model, terms, how.memory_format, FastOps(how.backend), how.patch_chunk)

    def patches(self, x: Tensor):
        """(the local model's patches of images at the scoring size, resized to its own; the grid)."""
        size = self.config.image_size
        if size != x.shape[-1]:
            x = self.ops.resize(x, (size, size))
        return self.ops.patches(x, self.config.patch_size, self.config.patch_stride)

    def forward(self, x: Tensor, want_map: bool = True) -> Terms:
        patches, grid = self.patches(x)
        chunks = [patches] if self.patch_chunk is None else patches.split(self.patch_chunk)
        parts = [self.terms(c, want_map) for c in chunks]
        per_patch = torch.cat([s for s, _ in parts]).view(x.shape[0], grid.count)
        k = self.options.local_topk
        s = per_patch.amax(1) if k == 1 else per_patch.topk(min(k, grid.count), dim=1).values.mean(1)
        if not want_map or parts[0][1] is None:
            return Terms(s, None)
        # maha: the residuals are averaged over overlapping patches first, then measured
        return Terms(s, self._smooth(self.ops.fold(torch.cat([m for _, m in parts]), grid)))

    def with_ops(self, ops: Any) -> Component:
        out = super().with_ops(ops)
        out.patch_chunk = self.patch_chunk if isinstance(ops, FastOps) else None
        return out


# the defect map's smoothing and image score, chosen on mvtec_bottle and the grey texture sets
# with synthetic-defect validation and seed 0 (docs/results_quality.md, "structural defects")
DEFECT_MAP_SIGMA = 8.0
DEFECT_SIGMA_SIZE = 224.0
DEFECT_SCORE_SIGMA = 1.0
DEFECT_TOP_FRACTION = 0.001

# working images with a side over 1024 px are scored in 1024² tiles (overlap 128 px, blended),
# one a pass: memory then stays that of a 1024² image whatever the size (a 1536² image, idle
# 2-core EPYC: peak RSS 1.88 GB whole against 1.16 GB in four tiles, at 1.6x the time spent on
# the overlap; smaller images, where memory is no concern, run whole)
DEFECT_TILER = Tiler(1024, 896)
DEFECT_TILE_BATCH = 1


class DefectPart(Component):
    """The defect model (:mod:`igd_fast.models.defect`) at the image's own aspect: the map is
    the logit and the repair residual, each standardised by the validation normals' pixel
    mean / std and the residual weighted by how well it separated synthetic defects there
    (the checkpoint's normaliser), of the image as it is, smoothed by :data:`DEFECT_MAP_SIGMA`;
    the term is the mean of the top :data:`DEFECT_TOP_FRACTION` of that map averaged over the
    test-time flips and smoothed by :data:`DEFECT_SCORE_SIGMA`
    (sigmas in pixels at working size :data:`DEFECT_SIGMA_SIZE`, scaled with it)."""

    kind, file = "defect", "defect.pt"
    keeps_aspect = True
    residual_map = False

    def __init__(self, model: nn.Module, normaliser: dict, tiler: Tiler | None = DEFECT_TILER) -> None:
        super().__init__()
        self.model = model
        self.normaliser = dict(normaliser)
        self.tiler = tiler  # None: whole images whatever their size (export)

    @classmethod
    def load(cls, path: Path, device: torch.device, terms: TermOptions, how: LoadOptions) -> Component:
        model, norm = load_defect_model(path, device)
        return cls(fold_batchnorm(model).to(memory_format=how.memory_format) if how.fold_bn else model, norm)

    @property
    def image_size(self) -> int:
        return self.model.config.image_size

    @property
    def has_map(self) -> bool:
        return True

    def standardised(self, x: Tensor) -> Tensor:
        """N×2×H×W: z(logit) + w·z(residual) of images ``x`` at the working size, of the image
        as it is (channel 0: the map) and averaged over the test-time flips (channel 1: the
        term); images larger than the tiler's tile are scored tile by tile (bounded memory)
        and stitched back."""
        if self.tiler is None:
            return self._standardised(x)
        return self.tiler.apply(self._standardised, x, DEFECT_TILE_BATCH)

    def _standardised(self, x: Tensor) -> Tensor:
        n = self.normaliser
        logit, resid = flip_passes(self.model, x)
        z = (logit - n["logit_mean"]) / n["logit_std"] + n["resid_weight"] * (resid - n["resid_mean"]) / n["resid_std"]
        return torch.cat([z[:, :1], z.mean(1, keepdim=True)], 1)

    def forward(self, x: Tensor, want_map: bool = True) -> Terms:
        z = self.standardised(x)
        scale = max(x.shape[-2:]) / DEFECT_SIGMA_SIZE
        fine = gaussian_smooth(z[:, 1:], DEFECT_SCORE_SIGMA * scale).flatten(1)
        k = max(1, math.ceil(DEFECT_TOP_FRACTION * fine.shape[1]))
        score = fine.topk(k, dim=1).values.mean(1)
        return Terms(score, gaussian_smooth(z[:, :1], DEFECT_MAP_SIGMA * scale) if want_map else None)

    def with_networks(self, wrap: Callable[[nn.Module], nn.Module]) -> Component:
        out = copy.copy(self)
        out._modules = dict(self._modules)
        out.model = wrap(self.model)
        return out

    def exportable(self) -> Component:
        out = copy.copy(self)  # plain PyTorch ops throughout; no tiling, whose loop depends on the size
        out._modules = dict(self._modules)
        out.tiler = None
        return out


COMPONENTS: dict[str, type[Component]] = {c.kind: c for c in (ImageModel, PatchModel, DefectPart)}


def component_files(model_dir: str | Path) -> dict[str, Path]:
    """The file of every component ``model_dir`` holds, in :data:`COMPONENTS` order; the
    package's one message (FileNotFoundError) for a directory that holds none."""
    d = Path(model_dir)
    found = {kind: d / cls.file for kind, cls in COMPONENTS.items() if (d / cls.file).is_file()}
    if not found:
        model_files(d)  # raises: no such directory, or no model in it
    return found


def load_components(model_dir: str | Path, device: torch.device, terms: TermOptions,
                    how: LoadOptions) -> dict[str, Component]:  # fmt: skip
    """Every component whose file ``model_dir`` holds, in :data:`COMPONENTS` order."""
    return {kind: COMPONENTS[kind].load(f, device, terms, how) for kind, f in component_files(model_dir).items()}
