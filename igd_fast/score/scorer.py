"""Scorer: the trained IGD model(s) of a model directory applied to batches of images.

Image score s = s_G + s_L (SPEC section 1):
  s_G = l_r + l_h of the global model on the image resized to its size,
  s_L = max over patches of (l_r + l_h) of the local model, on the patches of the
        image at the local model's image size (patch size / stride from its config).
Per-pixel map = global per-pixel l_r + local per-pixel l_r (patch maps folded back,
overlaps averaged), brought back to the image's original resolution (bilinear).

Scoring options (``Scorer`` arguments and ``score`` / ``eval`` flags; see docs/results_quality.md
for the ablation that chose the defaults):
  score_norm "standard": s = (s_G - m_G) / sd_G + (s_L - m_L) / sd_L with each term's mean and
      standard deviation (ddof 1) over the validation normals (kept in threshold.json),
      so neither model's scale dominates the sum; "sum" (the paper): s = s_G + s_L.
  latent_weight w: each model's term is l_r + w·l_h (1 = the paper; 0 drops l_h).
  local_topk k: s_L = mean of the k largest patch terms (1 = the paper's max).
  map_norm "standard": map = (map_G - pm_G) / psd_G + (map_L - pm_L) / psd_L with each
      model's map mean and standard deviation over all validation-normal pixels (at model
      resolution; kept in threshold.json); "sum" (the paper): map_G + map_L.
  map_term "abs": each model's map is its absolute error mean_c |x - x_hat| / L alone
      (the l_r map's first part), not "lr" (the paper): rho·|x - x_hat|/L + (1 - rho)(1 -
      MS-SSIM map), whose SSIM part saturates where a texture is not reconstructed.
      Variants without an MS-SSIM term keep their own map.
  map_term "maha": each map is the squared Mahalanobis distance of the residual x - x_hat
      over the channels, under the residual's mean and covariance on the validation normals'
      pixels (per model; :mod:`igd_fast.score.residual`). Variants without a decoder keep
      no map.
  recon_colour (abs and maha maps): "grey" takes the residual against the reconstruction's
      nearest grey image (its channel mean in pixel space), so the residual's colour is the
      input's alone; "damped" keeps the reconstruction's colour scaled by sqrt(ridge), so the
      maha map weighs it like the grey residual, not ~100 times more; "auto" (the default)
      damps when every validation normal is grey (R = G = B), as the AE of grey data never
      learns colour; "rgb" keeps the reconstruction as it is (before this option). The
      decision is in threshold.json (``recon_colour_used``).
  residual_sigma (maha only): Gaussian smoothing of the residual x - x_hat (σ in pixels of
      the model's input; the local model's after folding) before its distance is taken, so
      the AE's pixel noise averages out before it is measured and a defect's colour does not.
  map_sigma: Gaussian smoothing (σ in pixels of the original resolution, truncated at
      4σ, symmetric edges: scipy.ndimage.gaussian_filter's "reflect") of each map; 0 = none.
  map_position: after smoothing, each position of the map is standardised by the
      validation normals' mean and std there (on a grid of at most 32², see
      :mod:`igd_fast.score.residual`).
  image_score "map-max": the image score is the maximum of the final map (at the original
      resolution, after smoothing and map_position) instead of the terms' combination
      ("terms", the paper). s_G and s_L are still reported.
  image_score "map-excess": the mean over the final map's pixels of max(map - t, 0), with t
      the ``excess_quantile`` quantile of the validation normals' final-map pixels (kept in
      threshold.json as ``excess_level``): how much of the image is how far above what
      normal pixels reach. Unlike the maximum, one hot pixel of a normal image weighs little
      and a defect's whole area counts.

Single-model directories (the paper's one-class protocols, ``train --model global``):
with only ``global.pt`` the score is s = s_G and the map the global map; with only
``local.pt``, s = s_L and the folded local map. The missing term is reported as 0.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from .._dist import resolve_device
from ..checkpoint import load_model, model_files, validation_files
from ..data import IMAGENET_MEAN, IMAGENET_STD
from ..limits import check_sigma
from ..models.fold import fold_batchnorm
from ..models.polyphase import fuse_upsampling
from ..models.terms import latent_term, sample_scores
from ..ops.patches import extract_patches, fold_patch_maps, patch_scores
from .calibrate import calibrate
from .io import Item, ScoreDataset, all_grey, collate
from .networks import compile_networks
from .precision import (
    PRECISIONS,
    PrecisionError,
    PrecisionGuard,
    bf16_networks,
    bf16_support,
    guard_record,
    guard_values,
)
from .residual import COLOUR_DAMPING, channel_distance, grey_projection, map_excess, standardise_positions
from .threshold import (
    DEFAULT_ALPHA,
    DEFAULT_SCORING,
    IMAGE_SCORES,
    MAP_TERMS,
    RECON_COLOURS,
    RESIDUAL_MAP_TERMS,
    SCORE_NORMS,
    normalise_scores,
    read_threshold,
    write_threshold,
)

# patches per local-model forward pass: one pass over a default batch's 3,600 patches
# ran fastest of 225/450/900/1800/4096 at width 64, fp32 and bf16, on the 2-core EPYC VM
# (benchmarks/test_bench_scoring.py::test_bench_patch_chunk; README); smaller chunks bound
# the activation memory (fp32, 16 images: +0.9 GB at 4096 against +0.45 GB at 1800)
DEFAULT_PATCH_CHUNK = 4096
# how much of the reconstruction's colour the residual maps keep (recon_colour_used)
COLOUR_KEEP = {"grey": 0.0, "damped": COLOUR_DAMPING}


@dataclass
class BatchScores:
    """Scores of one batch at model resolution."""

    score: Tensor  # N, s_G + s_L
    s_global: Tensor  # N (zeros without a global model)
    s_local: Tensor  # N (zeros without a local model)
    maps: Tensor | None  # N×1×S×S per-pixel maps (global + local), or None (not wanted / no map)


@dataclass
class ScoredImage:
    """One image's result; ``map`` is H×W float32 at the original resolution (None when
    not asked for, or for a variant without a map)."""

    index: int
    path: str
    score: float
    s_global: float
    s_local: float
    map: np.ndarray | None


@dataclass
class Failure:
    """An image that could not be read (it is reported, not scored)."""

    index: int
    path: str
    error: str


class Scorer:
    """Loads ``global.pt`` and/or ``local.pt`` of a model directory and scores images.

    ``batch_size`` images go through the global model at once and their
    ``batch_size × P`` patches through the local model in chunks of ``patch_chunk``.
    ``backend`` overrides the kernel backend (``None``: by device / IGD_FAST_BACKEND).
    ``channels_last`` runs the networks in that memory format (measured 1.3-1.8× faster
    convolutions on CPU here; same results to float rounding); the kernels always get
    contiguous NCHW tensors. ``fold_bn`` folds every BatchNorm into its convolution
    (:func:`igd_fast.models.fold.fold_batchnorm`; the same function up to rounding).
    ``fuse_upsample`` runs each decoder's nearest-2x upsample + 3x3 conv as one 2x2 polyphase
    convolution (:func:`igd_fast.models.polyphase.fuse_upsampling`; the same function up to
    rounding, 16/36 of those multiply-adds); ``None``: on for the CPU, where it was measured
    (fp32 width 64: global network 1.19x, local 1.08x; README), off elsewhere.
    ``score_norm``, ``latent_weight``, ``local_topk``, ``map_norm``, ``map_term``, ``map_sigma``,
    ``map_position`` and ``image_score``: the scoring options of the module doc.
    ``precision`` "fp32", "bf16" or "auto" (:mod:`igd_fast.score.precision`): the networks'
    arithmetic; "auto" runs the bf16-vs-fp32 guard (tolerances ``guard``) on the validation
    normals here, at construction, and keeps bf16 for each model that passes it. The
    decision and the measured values are in :attr:`precision_record`. ``compile`` runs the
    networks through ``torch.compile`` (inductor, frozen weights; compiled on the first batch
    of each shape).
    """

    def __init__(
        self,
        model_dir: str | Path,
        device: str | torch.device | None = None,
        batch_size: int = 16,
        backend: str | None = None,
        patch_chunk: int = DEFAULT_PATCH_CHUNK,
        alpha: float = DEFAULT_ALPHA,
        channels_last: bool = True,
        fold_bn: bool = True,
        score_norm: str = DEFAULT_SCORING["score_norm"],
        latent_weight: float = DEFAULT_SCORING["latent_weight"],
        local_topk: int = DEFAULT_SCORING["local_topk"],
        map_sigma: float = DEFAULT_SCORING["map_sigma"],
        map_norm: str = DEFAULT_SCORING["map_norm"],
        map_term: str = DEFAULT_SCORING["map_term"],
        map_position: bool = DEFAULT_SCORING["map_position"],
        image_score: str = DEFAULT_SCORING["image_score"],
        residual_sigma: float = DEFAULT_SCORING["residual_sigma"],
        excess_quantile: float = DEFAULT_SCORING["excess_quantile"],
        recon_colour: str = DEFAULT_SCORING["recon_colour"],
        precision: str = "fp32",
        guard: PrecisionGuard | None = None,
        compile: bool = False,
        fuse_upsample: bool | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.device = resolve_device(device)
        if int(batch_size) < 1 or int(patch_chunk) < 1:
            raise ValueError(f"batch_size and patch_chunk must be >= 1, got {batch_size} and {patch_chunk}")
        self.batch_size = int(batch_size)
        self.backend = backend
        self.patch_chunk = int(patch_chunk)
        self.alpha = alpha
        if score_norm not in SCORE_NORMS:
            raise ValueError(f"score_norm must be one of {SCORE_NORMS}, got {score_norm!r}")
        if not (np.isfinite(latent_weight) and latent_weight >= 0):
            raise ValueError(f"latent_weight must be a finite number >= 0, got {latent_weight}")
        if map_norm not in SCORE_NORMS:
            raise ValueError(f"map_norm must be one of {SCORE_NORMS}, got {map_norm!r}")
        if map_term not in MAP_TERMS:
            raise ValueError(f"map_term must be one of {MAP_TERMS}, got {map_term!r}")
        if image_score not in IMAGE_SCORES:
            raise ValueError(f"image_score must be one of {IMAGE_SCORES}, got {image_score!r}")
        if int(local_topk) < 1:
            raise ValueError(f"local_topk must be >= 1, got {local_topk}")
        if not (np.isfinite(map_sigma) and map_sigma >= 0):
            raise ValueError(f"map_sigma must be a finite number >= 0, got {map_sigma}")
        if not (np.isfinite(residual_sigma) and residual_sigma >= 0):
            raise ValueError(f"residual_sigma must be a finite number >= 0, got {residual_sigma}")
        check_sigma(map_sigma, "map_sigma"), check_sigma(residual_sigma, "residual_sigma")  # memory: igd_fast.limits
        if residual_sigma > 0 and map_term != "maha":
            raise ValueError(f"residual_sigma smooths the residual of map_term='maha', not of {map_term!r}")
        if not (np.isfinite(excess_quantile) and 0 < excess_quantile < 1):
            raise ValueError(f"excess_quantile must be in (0, 1), got {excess_quantile}")
        if recon_colour not in RECON_COLOURS:
            raise ValueError(f"recon_colour must be one of {RECON_COLOURS}, got {recon_colour!r}")
        if recon_colour in COLOUR_KEEP and map_term not in RESIDUAL_MAP_TERMS:
            raise ValueError(f"recon_colour={recon_colour!r} applies to the residual maps (map_term 'abs' or "
                             f"'maha'), not to map_term={map_term!r}")  # fmt: skip
        self.score_norm = score_norm
        self.latent_weight = float(latent_weight)
        self.local_topk = int(local_topk)
        self.map_sigma = float(map_sigma)
        self.map_norm = map_norm
        self.map_term = map_term
        self.map_position = bool(map_position)
        self.image_score = image_score
        self.residual_sigma = float(residual_sigma)
        self.excess_quantile = float(excess_quantile)
        self.recon_colour = recon_colour
        # statistics fitted so far while calibrating (used before calibration() has them)
        self._fitting: dict | None = None
        self._residual_maps = False  # True while the channel statistics are fitted
        self._raw = False  # True while calibrating: term stats are not known yet
        files = model_files(self.model_dir)
        self.fuse_upsample = self.device.type == "cpu" if fuse_upsample is None else bool(fuse_upsample)
        self.global_model = self._load(files, "global", fold_bn)
        self.local_model = self._load(files, "local", fold_bn)
        self._fmt = torch.channels_last if channels_last else torch.contiguous_format
        for kind, m in (("global", self.global_model), ("local", self.local_model)):
            if m is None:
                continue
            if m.config.kind != kind:
                raise ValueError(f"{files[kind]} holds a {m.config.kind} model, not a {kind} one")
            m.to(memory_format=self._fmt)
        g, loc = self.global_model, self.local_model
        map_options = self.map_term == "maha" or self.map_position or self.image_score != "terms"
        if map_options and not any(m is not None and m.config.method.recon for m in (g, loc)):
            raise ValueError(f"map_term='maha', map_position and the map image scores need a model with a decoder; "
                             f"{self.model_dir} holds {g.config.variant if g is not None else loc.config.variant} "
                             "models without one")  # fmt: skip
        # images are read at the global size; the local model resizes to its own
        self.image_size = (g or loc).config.image_size
        self.recon_colour_used = self._recon_colour_used()
        self.local_size = loc.config.image_size if loc is not None else None
        self.images_seen = 0
        self.seconds = 0.0
        self._calibration: dict | None = None
        # after the sizes: the auto guard scores the validation normals
        self.precision_record = self._set_precision(precision, guard or PrecisionGuard())
        self.compiled = bool(compile)
        if compile:
            self.global_model, self.local_model = (compile_networks(m) if m is not None else None
                                                   for m in (self.global_model, self.local_model))  # fmt: skip

    def _recon_colour_used(self) -> str:
        """What ``recon_colour`` decides for the residual maps: "rgb", "grey" or "damped"."""
        if self.map_term not in RESIDUAL_MAP_TERMS or self.recon_colour != "auto":
            return self.recon_colour if self.map_term in RESIDUAL_MAP_TERMS else "rgb"
        return "damped" if all_grey(validation_files(self.model_dir)) else "rgb"

    def _load(self, files: dict, kind: str, fold_bn: bool):
        if kind not in files:
            return None
        model = load_model(files[kind], self.device)
        # scoring networks with BatchNorm folded into the convolutions: the same
        # function up to float rounding (tests/test_fold.py), one pass fewer per layer
        model = fold_batchnorm(model) if fold_bn else model
        # and upsample + conv as one polyphase conv (tests/test_polyphase.py)
        return fuse_upsampling(model) if self.fuse_upsample else model

    # ------------------------------------------------------------------ precision

    def _model(self, kind: str):
        return self.global_model if kind == "global" else self.local_model

    def _set_model(self, kind: str, model) -> None:
        if kind == "global":
            self.global_model = model
        else:
            self.local_model = model

    def _set_precision(self, precision: str, guard: PrecisionGuard) -> dict:
        """Put each model's networks at the precision asked for; the record of the decision."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        rec: dict = {"requested": precision, "models": {k: "fp32" for k in self.kinds}}
        if precision == "fp32":
            return rec
        why = bf16_support(self.device)
        if why is not None:
            if precision == "bf16":
                raise PrecisionError(f"bf16 scoring needs native bf16: {why}")
            rec["reason"] = why
            return rec
        bf16 = {k: bf16_networks(self._model(k)) for k in self.kinds}
        if precision == "auto":
            rec["guard"] = guard_record(guard)
            rec["guard_values"] = values = self._guard(bf16, guard)
            bf16 = {k: m for k, m in bf16.items() if values[k]["passed"]}
            rec["reason"] = "guard passed" if len(bf16) == len(self.kinds) else "guard failed for " + ", ".join(
                k for k in self.kinds if k not in bf16)  # fmt: skip
        for k, m in bf16.items():
            self._set_model(k, m)
            rec["models"][k] = "bf16"
        return rec

    @torch.inference_mode()
    def _guard(self, bf16: dict, guard: PrecisionGuard) -> dict:
        """Each model's image terms and maps on the validation normals in fp32 and bf16,
        compared by :func:`.precision.guard_values`."""
        files = validation_files(self.model_dir)
        if not files:
            raise ValueError(f"{self.model_dir}/run.json lists no validation images for the precision guard")
        acc = {k: {"fp32": ([], []), "bf16": ([], [])} for k in bf16}
        for batch in self.loader(files):
            if batch.images is None:
                continue
            x = batch.images.to(self.device, torch.float32)
            for kind in bf16:
                for name, model in (("fp32", self._model(kind)), ("bf16", bf16[kind])):
                    s, m = self._model_terms(kind, model, x, True)
                    acc[kind][name][0].append(s.double().cpu())
                    if m is not None:
                        acc[kind][name][1].append(m.float().cpu())
        out = {}
        for kind, a in acc.items():
            (t32, m32), (t16, m16) = a["fp32"], a["bf16"]
            if not t32:
                raise ValueError(f"none of the {len(files)} validation images of {self.model_dir} could be read")
            maps = (torch.cat(m32), torch.cat(m16)) if m32 else (None, None)
            out[kind] = guard_values(torch.cat(t32).numpy(), torch.cat(t16).numpy(), *maps, guard)
        return out

    def _model_terms(self, kind: str, model, x: Tensor, want_maps: bool) -> tuple[Tensor, Tensor | None]:
        return self._global_terms(x, want_maps, model) if kind == "global" else self._local_terms(x, want_maps, model)

    @property
    def precision(self) -> dict:
        """Each model's network precision after the decision ("fp32" or "bf16")."""
        return dict(self.precision_record["models"])

    def _cache_key(self) -> dict:
        # bf16 scores differ in the last digits: a threshold calibrated in fp32 is not theirs
        bf16 = sorted(k for k, p in self.precision.items() if p != "fp32")
        key = self.scoring if not bf16 else {**self.scoring, "bf16": bf16}
        # what "auto" decided, so a record from an older meaning of it is recalibrated
        return key if self.map_term not in RESIDUAL_MAP_TERMS else {**key, "recon_colour_used": self.recon_colour_used}

    @property
    def kinds(self) -> tuple[str, ...]:
        """The models this scorer runs: ("global", "local"), ("global",) or ("local",)."""
        return tuple(k for k, m in (("global", self.global_model), ("local", self.local_model)) if m is not None)

    @property
    def scoring(self) -> dict:
        """The scoring options (recorded in threshold.json: a cache for others is stale)."""
        return {"score_norm": self.score_norm, "latent_weight": self.latent_weight, "local_topk": self.local_topk,
                "map_sigma": self.map_sigma, "map_norm": self.map_norm,
                "map_term": self.map_term, "map_position": self.map_position,
                "image_score": self.image_score, "residual_sigma": self.residual_sigma,
                "excess_quantile": self.excess_quantile,
                # no effect on the other maps: recorded as the legacy value, so their caches stay valid
                "recon_colour": self.recon_colour if self.map_term in RESIDUAL_MAP_TERMS else "rgb"}  # fmt: skip

    # ------------------------------------------------------------------ core

    @torch.inference_mode()
    def score_batch(self, images: Tensor, want_maps: bool = True) -> BatchScores:
        """Score an N×3×S×S batch already resized to :attr:`image_size` and ImageNet-normalised.
        ``score`` is the terms' combination; with ``image_score="map-max"`` the image score
        comes from the map at the original resolution, i.e. from :meth:`score_paths`."""
        x = images.to(self.device, torch.float32, non_blocking=True)
        zero = torch.zeros(x.shape[0], device=x.device)
        s_g, map_g = self._global_terms(x, want_maps) if self.global_model is not None else (zero, None)
        s_l, map_l = self._local_terms(x, want_maps) if self.local_model is not None else (zero, None)
        # a model without a map (Deep SVDD) leaves the other's map; neither: None
        return BatchScores(self._combine(s_g, s_l), s_g, s_l, self._combine_maps(map_g, map_l))

    def _combine_maps(self, map_g: Tensor | None, map_l: Tensor | None) -> Tensor | None:
        # a model without a map (Deep SVDD) leaves the other's map; neither: None
        if map_g is None or map_l is None:
            return map_l if map_g is None else map_g
        if self.map_norm == "sum":
            return map_g + map_l
        st = self._stat("map_stats")
        g, loc = st["global"], st["local"]
        return (map_g - g["mean"]) / g["std"] + (map_l - loc["mean"]) / loc["std"]

    def _stat(self, name: str):
        """A fitted statistic: the one being calibrated, else the cached calibration's."""
        fitting = getattr(self, "_fitting", None)  # exported runtimes have no fitting state
        if fitting is not None and name in fitting:
            return fitting[name]
        return self.calibration()[name]

    def _combine(self, s_g: Tensor, s_l: Tensor, stats: dict | None = None) -> Tensor:
        if self.score_norm == "sum" or (self._raw and stats is None):
            return s_g + s_l
        st = self.calibration()["term_stats"] if stats is None else stats
        out = torch.zeros_like(s_g)
        for kind, s in (("global", s_g), ("local", s_l)):
            if kind in st:  # a missing model contributes 0, as in the sum
                out = out + (s - st[kind]["mean"]) / st[kind]["std"]
        return out

    def _terms(self, model, x: Tensor, want_maps: bool) -> tuple[Tensor, Tensor | None]:
        """The variant's per-sample term l_r + latent_weight·l_h and its map."""
        if self.latent_weight == 1.0 and self.map_term == "lr":  # the training code's own sum, unchanged
            return sample_scores(model, x, want_maps, self.backend, self._fmt)
        z, x_hat = model(x.contiguous(memory_format=self._fmt))
        extra = latent_term(model, z) * self.latent_weight
        cfg = model.config
        if cfg.method.recon == "msssim":
            abs_map = want_maps and self.map_term == "abs"
            own_map = want_maps and self.map_term == "lr"
            s, m = patch_scores(x, x_hat.contiguous(), cfg.msssim(), cfg.rho, extra, own_map, self.backend)
            if abs_map:
                m = (x.float() - self._map_recon(x_hat)).abs().mean(1, keepdim=True) / cfg.data_range
        elif cfg.method.recon == "mse":
            err = (x.float() - x_hat.float()).pow(2)
            s, m = err.mean((1, 2, 3)) + extra, (err.mean(1, keepdim=True) if want_maps else None)
        else:
            return extra, None
        if want_maps and self.map_term == "maha":
            # the C-channel residual; _channel_map turns it into the distance after folding
            m = x.float() - self._map_recon(x_hat)
        return s, m

    def _map_recon(self, x_hat: Tensor) -> Tensor:
        """The reconstruction the residual maps compare with, its colour as ``recon_colour``
        decided (only when a residual map is made; the terms keep the model's own)."""
        x_hat = x_hat.float()
        keep = COLOUR_KEEP.get(self.recon_colour_used)
        return x_hat if keep is None else grey_projection(x_hat, IMAGENET_MEAN, IMAGENET_STD, keep)

    def _global_terms(self, x: Tensor, want_maps: bool, model=None) -> tuple[Tensor, Tensor | None]:
        # the whole image is one "patch" of the global config: the variant's score and
        # its per-pixel map in one pass of the kernels
        s, m = self._terms(self.global_model if model is None else model, x, want_maps)
        return s, self._channel_map("global", m)

    def _local_terms(self, x: Tensor, want_maps: bool, model=None) -> tuple[Tensor, Tensor | None]:
        loc = self.local_model if model is None else model
        patches, grid = self._patches(x, loc)
        parts = [self._terms(loc, c, want_maps) for c in patches.split(self.patch_chunk)]
        per_patch = torch.cat([s for s, _ in parts]).view(x.shape[0], grid.count)
        if self.local_topk == 1:
            s_l = per_patch.amax(1)
        else:
            s_l = per_patch.topk(min(self.local_topk, grid.count), dim=1).values.mean(1)
        if not want_maps or parts[0][1] is None:
            return s_l, None
        # maha: the residuals are averaged over overlapping patches first (noise averages
        # out, a defect's colour does not), then measured
        map_l = self._channel_map("local", fold_patch_maps(torch.cat([m for _, m in parts]), grid, "mean",
                                                           self.backend))  # fmt: skip
        if self.local_size != x.shape[-1]:
            map_l = F.interpolate(map_l, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return s_l, map_l

    def _patches(self, x: Tensor, loc) -> tuple[Tensor, object]:
        """The local model's patches of images at the global size (resized to its own)."""
        if self.local_size != x.shape[-1]:
            x = F.interpolate(x, size=(self.local_size,) * 2, mode="bilinear", align_corners=False, antialias=True)
        return extract_patches(x, loc.config.patch_size, loc.config.patch_stride)

    def _channel_map(self, kind: str, m: Tensor | None) -> Tensor | None:
        """maha: the residual map's squared Mahalanobis distance (the residual itself while
        its statistics are being fitted); other map terms pass through."""
        if m is None or self.map_term != "maha":
            return m
        m = gaussian_smooth(m, self.residual_sigma)
        if getattr(self, "_residual_maps", False):
            return m
        return channel_distance(m, self._stat("channel_stats")[kind])

    # ------------------------------------------------------------------ streaming

    def loader(self, paths: Sequence[str | Path], num_workers: int = 0, indices: list[int] | None = None):
        ds = ScoreDataset(list(paths), self.image_size, indices)
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=num_workers,
            collate_fn=collate,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )

    def score_paths(
        self,
        paths: Sequence[str | Path],
        num_workers: int = 0,
        want_maps: bool = True,
        indices: list[int] | None = None,
        progress=None,
    ) -> Iterator[ScoredImage | Failure]:
        """Score image files in order, yielding one result per file.

        Unreadable files yield a :class:`Failure`. ``indices`` labels the files (e.g.
        their position in a larger list that was sharded across processes);
        ``progress`` is an optional tqdm bar advanced per file. Throughput accumulates in
        :attr:`images_per_second`.
        """
        for batch in self.loader(paths, num_workers, indices):
            results: list[tuple[int, ScoredImage | Failure]] = [
                (it.pos, Failure(it.index, it.path, it.error or "unreadable")) for it in batch.failed
            ]
            if batch.images is not None:
                t0 = time.perf_counter()
                map_score = self.image_score != "terms"
                out = self.score_batch(batch.images, want_maps or map_score)
                maps = self._to_original(out.maps, batch.items) if out.maps is not None else [None] * len(batch.items)
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                self.seconds += time.perf_counter() - t0
                self.images_seen += len(batch.items)
                sc, sg, sl = (t.double().cpu().tolist() for t in (out.score, out.s_global, out.s_local))
                if map_score:
                    sc = [self._map_score(m) for m in maps]
                    maps = maps if want_maps else [None] * len(maps)
                for j, it in enumerate(batch.items):
                    results.append((it.pos, ScoredImage(it.index, it.path, sc[j], sg[j], sl[j], maps[j])))
            # a batch's failures and images come back in input order, as documented
            yield from (r for _, r in sorted(results, key=lambda t: t[0]))
            if progress is not None:
                progress.update(len(batch.items) + len(batch.failed))

    def _map_score(self, m: np.ndarray) -> float:
        if self.image_score == "map-max":
            return float(m.max())
        level = self._stat("excess_level")
        # nan while the level itself is being calibrated (calibrate scores those maps after)
        return float("nan") if level is None else map_excess(m, level)

    def _to_original(self, maps: Tensor, items: list[Item]) -> list[np.ndarray]:
        out = []
        for j, it in enumerate(items):
            m = maps[j : j + 1]
            if tuple(m.shape[-2:]) != it.orig_size:
                m = F.interpolate(m, size=it.orig_size, mode="bilinear", align_corners=False)
            if self.map_sigma > 0:
                m = gaussian_smooth(m, self.map_sigma)
            if self.map_position and (st := self._stat("position_stats")) is not None:
                m = standardise_positions(m, st)
            out.append(m[0, 0].float().cpu().numpy())
        return out

    @property
    def images_per_second(self) -> float:
        """Scoring throughput so far (model + kernels + map resizing; reading excluded)."""
        return self.images_seen / self.seconds if self.seconds > 0 else 0.0

    # ------------------------------------------------------------------ threshold

    def calibration(self, num_workers: int = 0, recompute: bool = False) -> dict:
        """Threshold and heat-map scale from the validation normals in ``run.json``
        (cached in ``threshold.json``; see :mod:`igd_fast.score.threshold` for the rule)."""
        if self._calibration is not None and not recompute:
            return self._calibration
        cached = None if recompute else read_threshold(self.model_dir, self.alpha, self._cache_key())
        if cached is None:
            cached = calibrate(self, num_workers)
            try:
                write_threshold(self.model_dir, cached)
            except OSError as e:  # a read-only model dir still scores; it just recalibrates next time
                warnings.warn(f"could not cache the threshold in {self.model_dir}: {e}", stacklevel=2)
        self._calibration = cached
        return cached

    @property
    def threshold(self) -> float:
        return float(self.calibration()["threshold"])

    @property
    def pixel_threshold(self) -> float:
        """Map values above this are anomalous pixels (``pred_mask``); see :mod:`.threshold`."""
        return float(self.calibration()["pixel_threshold"])

    def pred_scores(self, scores, threshold: float | None = None) -> np.ndarray:
        """pred_score in [0, 1] of raw scores, 0.5 at ``threshold`` (default: the
        calibrated one), scaled by the validation-normal score spread."""
        c = self.calibration()
        t = float(c["threshold"]) if threshold is None else float(threshold)
        return normalise_scores(scores, t, float(c["score_scale"]))

    def map_range(self) -> tuple[float, float]:
        """(vmin, vmax) for heat-maps: median normal pixel at 0, max normal pixel at 0.5."""
        c = self.calibration()
        lo, hi = float(c["map_low"]), float(c["map_high"])
        return lo, lo + 2.0 * max(hi - lo, 1e-6)


def gaussian_smooth(maps: Tensor, sigma: float, truncate: float = 4.0) -> Tensor:
    """N×C×H×W maps blurred by a Gaussian of ``sigma`` pixels, separably, with the
    kernel cut at ``truncate``·sigma and symmetric edges (d c b a | a b c d): the same
    as ``scipy.ndimage.gaussian_filter(m, sigma, mode="reflect", truncate=truncate)``
    on each H×W plane."""
    if sigma <= 0:
        return maps
    r = int(truncate * sigma + 0.5)
    t = torch.arange(-r, r + 1, device=maps.device, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(maps.dtype)
    n, c, h, w = maps.shape
    x = maps.reshape(n * c, 1, h, w)
    for dim, size in ((2, h), (3, w)):
        x = x.index_select(dim, _symmetric_index(size, r, maps.device))
        kk = k.view(1, 1, -1, 1) if dim == 2 else k.view(1, 1, 1, -1)
        x = F.conv2d(x, kk)
    return x.reshape(n, c, h, w)


def _symmetric_index(size: int, r: int, device) -> Tensor:
    # indices -r .. size+r-1 folded back symmetrically (period 2·size), any r
    i = torch.arange(-r, size + r, device=device) % (2 * size)
    return torch.where(i >= size, 2 * size - 1 - i, i)
