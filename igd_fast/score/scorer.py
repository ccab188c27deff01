"""Scorer: the public face of scoring with a trained model directory.

``Scorer(model_dir)`` loads the directory's components (``global.pt`` and/or ``local.pt``)
and its scoring recipe (``recipe.json``, written by ``igd-fast train``; the defaults, the
paper's scoring, for a directory without one), builds the scoring module, and calibrates
the module's statistics and the post-processor on the validation normals of ``run.json``
when first needed (cached in ``threshold.json``, keyed by the model files and the recipe).

Image score s = s_G + s_L (SPEC section 1) and map = global + local per-pixel l_r by
default; every scoring option of :mod:`igd_fast.score.recipe` changes a stage of
:mod:`igd_fast.score.module`. A directory holding only ``global.pt`` scores s = s_G with the
global map, only ``local.pt`` s = s_L (the missing term is reported as 0).

Results: :meth:`Scorer.score_paths` (files, raw scores and maps at each image's size),
:meth:`Scorer.predict` (paths, PIL images, arrays or tensors, with the decision:
``pred_score``, ``pred_label``, ``anomaly_map``, ``pred_mask``), :meth:`Scorer.score_batch`
(a batch at the model size, taken as the images' size: what ``export`` traces).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .._dist import resolve_device
from ..checkpoint import validation_files
from .calibrate import Calibrator
from .components import DEFAULT_PATCH_CHUNK, LoadOptions, TermOptions, component_files, load_components
from .guard import GUARD_VERSION, PrecisionGuard, cached_verdict, device_name, measure
from .inputs import is_path_input, to_items
from .io import all_grey
from .module import BatchScores, ScoringModule
from .networks import compile_networks
from .postprocess import PostProcessor
from .precision import choose_precision
from .recipe import RESIDUAL_MAP_TERMS, Recipe, read_model_recipe
from .results import Failure, Prediction, ScoredImage
from .runner import Runner
from .threshold import DEFAULT_ALPHA, model_signature, read_threshold, write_threshold


class BaseScorer:
    """What every scorer offers over its :class:`Runner` and :class:`PostProcessor`:
    subclasses set ``runner``, ``recipe``, ``device``, ``model_dir`` and :meth:`calibration`."""

    runner: Runner
    recipe: Recipe
    _post: PostProcessor | None = None

    def calibration(self, num_workers: int = 0, recompute: bool = False) -> dict:
        raise NotImplementedError

    def use_calibration(self, record: Mapping[str, Any]) -> None:
        """Score with this calibration record (e.g. one that another process fitted)."""
        self._post = PostProcessor.from_record(record)

    def _ready(self, num_workers: int = 0) -> None:
        """Calibrate first when the recipe needs statistics that are not set yet."""

    @property
    def post_processor(self) -> PostProcessor:
        """The calibrated decision (calibrating first when needed)."""
        if self._post is None:
            self.calibration()
        return self._post

    @property
    def image_size(self) -> int:
        return self.runner.model.image_size

    @property
    def batch_size(self) -> int:
        return self.runner.batch_size

    @property
    def scoring(self) -> dict:
        """The options that shape scores and maps (recorded in threshold.json and the outputs)."""
        return self.recipe.scoring()

    def loader(self, paths: Sequence[str | Path], num_workers: int = 0, indices: list[int] | None = None):
        return self.runner.loader(paths, num_workers, indices)

    def score_paths(self, paths: Sequence[str | Path], num_workers: int = 0, want_maps: bool = True,
                    indices: list[int] | None = None, progress=None) -> Iterator[ScoredImage | Failure]:  # fmt: skip
        """Score image files in order, one :class:`ScoredImage` (or :class:`Failure` for an
        unreadable file) each; see :meth:`Runner.score_paths`."""
        self._ready(num_workers)
        yield from self.runner.score_paths(paths, num_workers, want_maps, indices, progress)

    def predict(self, x: Any, num_workers: int = 0) -> Prediction | list[Prediction]:
        """Score and decide: ``x`` is a path, a PIL image, a numpy array (H×W×C uint8, uint16
        or float in [0, 1]) or a tensor (C×H×W), one image (a :class:`Prediction` back) or a
        batch (a list, or an N×H×W×C / N×C×H×W array or tensor: a list back). Read exactly as
        files are (:mod:`igd_fast.score.inputs`), so a file and its pixels score the same."""
        post = self.post_processor
        if is_path_input(x):
            single = isinstance(x, (str, Path))
            results = list(self.score_paths([x] if single else list(x), num_workers))
        else:
            items, single = to_items(x, self.image_size, self.module.keep_aspect)
            self._ready(num_workers)
            results = list(self.runner.score_batches(self.runner.batches(items)))
        bad = [r for r in results if isinstance(r, Failure)]
        if bad:
            raise ValueError(f"cannot read {bad[0].path}: {bad[0].error}")
        out = [post.predict(r) for r in results]
        return out[0] if single else out

    @property
    def threshold(self) -> float:
        return self.post_processor.threshold

    @property
    def pixel_threshold(self) -> float:
        """Map values above this are anomalous pixels (``pred_mask``); see :mod:`.threshold`."""
        return self.post_processor.pixel_threshold

    def pred_scores(self, scores, threshold: float | None = None) -> np.ndarray:
        """pred_score in [0, 1] of raw scores, 0.5 at ``threshold`` (default: the calibrated one)."""
        post = self.post_processor
        return (post if threshold is None else post.with_threshold(threshold)).pred_score(scores)

    def map_range(self) -> tuple[float, float]:
        """(vmin, vmax) for heat-maps: median normal pixel at 0, max normal pixel at 0.5."""
        return self.post_processor.map_range

    @property
    def images_per_second(self) -> float:
        """Scoring throughput so far (model + kernels + map resizing; reading excluded)."""
        return self.runner.images_per_second

    def reset_throughput(self) -> None:
        self.runner.images_seen, self.runner.seconds = 0, 0.0


class Scorer(BaseScorer):
    """Scores images with the model directory ``model_dir``.

    The recipe: the directory's ``recipe.json`` with ``options`` (scoring options of
    :data:`igd_fast.score.recipe.OPTIONS` as keyword arguments: ``map_term="maha"``, ...) on
    top, recorded with source ``flag``; or ``recipe``, a :class:`Recipe` resolved already.
    ``precision`` "auto" scores with bf16 networks when the guard (:mod:`.guard`, tolerances
    ``guard``) passes; it runs with the fp32 calibration, which bf16 then keeps, and the
    decision is :attr:`precision_record` (``threshold.json`` caches the verdict).

    How it runs: ``batch_size`` images per batch, the local model's patches ``patch_chunk``
    at a time; ``backend`` overrides the kernels' (None: by device / IGD_FAST_BACKEND);
    ``channels_last`` (1.3-1.8x faster convolutions on CPU here), ``fold_bn`` (BatchNorm
    folded into the convolutions) and ``fuse_upsample`` (polyphase decoder; None: on for the
    CPU, where it was measured) change no result beyond float rounding; ``compile`` runs the
    networks through ``torch.compile`` (compiled on the first batch of each shape).
    """

    def __init__(self, model_dir: str | Path, device: str | torch.device | None = None, *,
                 recipe: Recipe | None = None, batch_size: int = 16, backend: str | None = None,
                 patch_chunk: int = DEFAULT_PATCH_CHUNK, alpha: float = DEFAULT_ALPHA, channels_last: bool = True,
                 fold_bn: bool = True, fuse_upsample: bool | None = None, compile: bool = False,
                 guard: PrecisionGuard | None = None, **options: Any) -> None:  # fmt: skip
        self.model_dir = Path(model_dir)
        self.device = resolve_device(device)
        self.alpha = alpha
        if int(patch_chunk) < 1:
            raise ValueError(f"batch_size and patch_chunk must be >= 1, got {batch_size} and {patch_chunk}")
        self.patch_chunk = int(patch_chunk)
        component_files(self.model_dir)  # a clear error for a directory without a model
        base = recipe if recipe is not None else Recipe.resolve(model=read_model_recipe(self.model_dir))
        self.recipe = base.override(options) if options else base
        self.fuse_upsample = self.device.type == "cpu" if fuse_upsample is None else bool(fuse_upsample)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        how = LoadOptions(fold_bn, self.fuse_upsample, fmt, int(patch_chunk), backend)
        self.recon_colour_used = self._recon_colour_used()
        components = load_components(self.model_dir, self.device, TermOptions.of(self.recipe, self.recon_colour_used),
                                     how)  # fmt: skip
        self.module = ScoringModule(components, self.recipe)
        self._check_maps()
        self.runner = Runner(self.module, self.device, batch_size)
        self._record: dict | None = None
        self._set_networks(guard or PrecisionGuard(), compile)

    def _recon_colour_used(self) -> str:
        """What ``recon_colour`` decides for the residual maps: "rgb", "grey" or "damped"."""
        r = self.recipe
        if r["map_term"] not in RESIDUAL_MAP_TERMS or r["recon_colour"] != "auto":
            return r["recon_colour"] if r["map_term"] in RESIDUAL_MAP_TERMS else "rgb"
        return "damped" if all_grey(validation_files(self.model_dir)) else "rgb"

    def _check_maps(self) -> None:
        m = self.module
        if (m.map_term == "maha" or m.map_position or m.map_scored) and not any(
                c.has_map for c in m.components.values()):  # fmt: skip
            variant = next(iter(m.components.values())).config.variant
            raise ValueError(f"map_term='maha', map_position and the map image scores need a model with a decoder; "
                             f"{self.model_dir} holds {variant} models without one")  # fmt: skip

    def _set_networks(self, guard: PrecisionGuard, compile: bool) -> None:
        """The networks' precision and compilation; ``auto`` scores in fp32 until the guard,
        which runs with the calibration, decides (:mod:`.guard`)."""
        self.guard, self.compiled = guard, bool(compile)
        self._fp32 = dict(self.module.components)
        chosen, self.precision_record, self._bf16 = choose_precision(self._fp32, self.recipe["precision"],
                                                                     self.device)  # fmt: skip
        self._pending = self._bf16 is not None  # auto: the guard has not decided yet
        self._use(chosen)

    def _use(self, chosen: Mapping[str, nn.Module]) -> None:
        if self.compiled:
            chosen = {k: c.with_networks(compile_networks) for k, c in chosen.items()}
        self.module = self.module.with_components(chosen)
        self.runner.model = self.module

    def _guard(self, record: dict) -> dict:
        """The guard's verdict on the bf16 candidate against this fp32 calibration ``record``."""
        fp32 = self.module.with_components(self._fp32)
        values = measure(fp32, fp32.with_components(self._bf16), self.runner, validation_files(self.model_dir),
                         record, self.guard)  # fmt: skip
        return {"version": GUARD_VERSION, "device": device_name(self.device), "tolerances": self.guard.record(),
                "values": values, "passed": values["passed"]}  # fmt: skip

    def _decide(self, record: Mapping[str, Any]) -> None:
        """Apply the guard's verdict in a calibration record (``auto``): bf16 when it passed."""
        verdict = cached_verdict(dict(record), self.guard, self.device)
        rec = {"requested": "auto", "models": dict.fromkeys(self._fp32, "fp32"), "calibrated_in": "fp32"}
        if verdict is None:
            rec["reason"] = "the calibration record holds no guard verdict for this device: fp32"
        else:
            failed = [k for k, ok in verdict["values"]["checks"].items() if not ok]
            rec["reason"] = "guard passed" if verdict["passed"] else "guard failed: " + ", ".join(failed)
            rec.update(guard=verdict["tolerances"], guard_values=verdict["values"], guard_device=verdict["device"])
            if verdict["passed"]:
                rec["models"] = dict.fromkeys(self._fp32, "bf16")
                self._use(self._bf16)
        self.precision_record, self._pending = rec, False

    # ------------------------------------------------------------------ what it holds

    def component(self, kind: str) -> nn.Module | None:
        return self.module.components[kind] if kind in self.module.components else None

    @property
    def global_model(self) -> nn.Module | None:
        """The global model's networks (None without ``global.pt``)."""
        c = self.component("global")
        return None if c is None else c.model

    @property
    def local_model(self) -> nn.Module | None:
        c = self.component("local")
        return None if c is None else c.model

    @property
    def local_size(self) -> int | None:
        c = self.component("local")
        return None if c is None else c.image_size

    @property
    def kinds(self) -> tuple[str, ...]:
        """The components this scorer runs: ("global", "local"), ("global",) or ("local",)."""
        return self.module.kinds

    @property
    def precision(self) -> dict:
        """Each model's network precision after the decision ("fp32" or "bf16")."""
        return dict(self.precision_record["models"])

    @property
    def needs_calibration(self) -> bool:
        """Whether the recipe's statistics are not set yet (scores need a calibration first)."""
        return bool(self.module.missing_statistics())

    def cache_key(self) -> dict:
        """What a cached calibration must have been made with (besides the model files and alpha)."""
        # bf16 scores differ in the last digits: a threshold calibrated in fp32 is not theirs
        # (auto's bf16 keeps the fp32 calibration: its guard checked the decisions against it)
        bf16 = sorted(k for k, p in self.precision.items() if p != "fp32") if self.recipe["precision"] == "bf16" else []
        key = self.scoring if not bf16 else {**self.scoring, "bf16": bf16}
        # what "auto" decided, so a record from an older meaning of it is recalibrated
        if self.recipe["map_term"] not in RESIDUAL_MAP_TERMS:
            return key
        return {**key, "recon_colour_used": self.recon_colour_used}

    # ------------------------------------------------------------------ scoring

    def _ready(self, num_workers: int = 0) -> None:
        if self.needs_calibration:
            self.calibration(num_workers)
        elif self._pending:  # auto's guard runs with the calibration; without one (--threshold): fp32
            try:
                self.calibration(num_workers)
            except (OSError, ValueError) as e:
                self.precision_record = {**self.precision_record, "reason": f"no calibration for the guard ({e}): fp32"}
                self._pending = False

    @torch.inference_mode()
    def score_batch(self, images: Tensor, want_maps: bool = True) -> BatchScores:
        """Score an N×3×S×S batch already resized to :attr:`image_size` and ImageNet-normalised,
        taken as the images' own size: the recipe's final score and map at S×S."""
        self._ready()
        return self.module(self.runner.to_device(images), want_maps)

    def calibration(self, num_workers: int = 0, recompute: bool = False) -> dict:
        """The module's statistics and the post-processor's state, fitted on the validation
        normals in ``run.json`` (cached in ``threshold.json``; rules in :mod:`.threshold`)."""
        if self._record is not None and not recompute:
            return self._record
        if recompute and self._bf16 is not None:  # auto calibrates in fp32 and guards again
            self._use(self._fp32)
            self._pending = True
        record = None if recompute else read_threshold(self.model_dir, self.alpha, self.cache_key())
        new = record is None
        if new:
            record = self._fit(num_workers)
        if self._pending and (new or cached_verdict(record, self.guard, self.device) is None):
            self.module.set_statistics(record)  # the guard scores with this calibration
            record, new = {**record, "precision_guard": self._guard(record)}, True
        if new:
            try:
                write_threshold(self.model_dir, record)
            except OSError as e:  # a read-only model dir still scores; it just recalibrates next time
                warnings.warn(f"could not cache the threshold in {self.model_dir}: {e}", stacklevel=2)
        self.use_calibration(record)
        return record

    def _fit(self, num_workers: int) -> dict:
        files = validation_files(self.model_dir)
        if not files:
            raise ValueError(f"{self.model_dir}/run.json lists no validation images to calibrate on")
        try:
            calibrator = Calibrator(self.module, self.runner, self.alpha, self.recipe["excess_quantile"])
            rec = calibrator.fit(files, num_workers)
        except ValueError as e:
            raise ValueError(f"{self.model_dir}: {e}") from None
        return {**rec, "signature": model_signature(self.model_dir), "scoring": self.cache_key(),
                "recon_colour_used": self.recon_colour_used}  # fmt: skip

    def use_calibration(self, record: Mapping[str, Any]) -> None:
        self.module.set_statistics(record)
        super().use_calibration(record)
        self._record = dict(record)
        if self._pending:
            self._decide(record)
