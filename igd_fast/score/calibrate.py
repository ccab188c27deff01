"""The calibrator: fits a scoring module's statistics and the post-processor's decision state
on the validation normals of a model directory, in one pass of the networks.

Each statistic is fitted with the ones before it in place (set on the module through
:meth:`ScoringModule.set_statistics`): the residual's channel Gaussian (maha), each map's
pixel mean/std (map_norm standard), the finished maps' per-position mean/std
(map_position), the excess level (map-excess), each term's mean/std; then the threshold,
the score scale, the heat-map range and the pixel threshold (rules in
:mod:`igd_fast.score.threshold`). The record is what ``threshold.json`` caches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .components import Terms
from .decide import image_rule, pixel_rule
from .io import Item
from .module import ScoringModule
from .residual import ChannelAccumulator, PositionAccumulator, excess_level
from .runner import Runner
from .synthetic import SEED as SYNTHETIC_SEED
from .synthetic import per_image, synthetic_defects
from .threshold import NORMALISATION, PIXEL_RULE, RULE, RULES_VERSION, conformal_threshold, score_scale, term_stats


@dataclass
class Synthetic:
    """Synthetic defects' image scores, and their maps and masks at each image's own size."""

    scores: list[float] = field(default_factory=list)
    maps: list[Tensor] = field(default_factory=list)
    masks: list[Tensor] = field(default_factory=list)


@dataclass
class Outputs:
    """The components' outputs on the validation normals, batch by batch (the networks run once)."""

    batches: list[tuple[list[Item], dict[str, Terms], tuple[int, int]]] = field(default_factory=list)
    inputs: list[Tensor] = field(default_factory=list)  # each batch's images (the synthetic defects' canvas)
    failed: list[dict] = field(default_factory=list)

    @property
    def items(self) -> list[Item]:
        return [it for items, _, _ in self.batches for it in items]


class Calibrator:
    """Fits ``module`` (through ``runner``'s reading and batching) on validation normals at
    false-alarm rate ``alpha``; ``excess_quantile`` sets the excess level of map-excess."""

    def __init__(self, module: ScoringModule, runner: Runner, alpha: float, excess_quantile: float) -> None:
        self.module, self.runner = module, runner
        self.alpha, self.excess_quantile = alpha, excess_quantile

    def fit(self, files: Sequence[str | Path], num_workers: int = 0) -> dict:
        """The calibration record of ``files``; the module is left holding its statistics."""
        if not files:
            raise ValueError("no validation images to calibrate on")
        out = self._outputs(files, num_workers)
        if not out.batches:
            raise ValueError(f"none of the {len(files)} validation images could be read")
        m = self.module
        m.clear_statistics()
        fitted: dict = {}
        if "channel_stats" in m.needed_statistics():
            self._set(fitted, "channel_stats", self._channel_stats(out))
        if "map_stats" in m.needed_statistics():
            self._set(fitted, "map_stats", self._map_stats(out))
        if "component_levels" in m.needed_statistics():
            self._set(fitted, "component_levels", self._component_levels(out))
        maps = self._maps(out, fitted)
        terms = self._terms(out)
        self._set(fitted, "term_stats", term_stats({k: terms[k].tolist() for k in m.kinds}, m.kinds))
        if m.map_scored:
            scores = [float(m.image_score_of(x)[0]) for x in maps]
        else:
            # float32, as the module combines them: a re-scored validation image gets the same score
            scores = m.combine_terms({k: terms[k].float() for k in m.kinds}).tolist()
        return self._record(out, scores, maps, fitted, self._synthetic(out, bool(maps)))

    def _set(self, fitted: dict, name: str, value) -> None:
        fitted[name] = value
        self.module.set_statistics({name: value})

    @torch.inference_mode()
    def _outputs(self, files: Sequence[str | Path], num_workers: int) -> Outputs:
        out = Outputs()
        for batch in self.runner.loader(files, num_workers):
            out.failed += [{"path": it.path, "error": it.error} for it in batch.failed]
            for part in batch.by_size():
                x = self.runner.to_device(part.images)
                out.batches.append((part.items, self.module.terms(x, True), tuple(x.shape[-2:])))
                out.inputs.append(x)
        return out

    def _channel_stats(self, out: Outputs) -> dict:
        """Each decoder component's residual channel Gaussian over the validation pixels (the
        local model's residuals folded back into images, as they are measured)."""
        acc: dict[str, ChannelAccumulator] = {}
        for _, terms, _ in out.batches:
            for kind, t in terms.items():
                if t.map is not None and self.module.components[kind].residual_map:
                    acc.setdefault(kind, ChannelAccumulator()).add(t.map)
        return {k: a.finish() for k, a in acc.items()}

    @torch.inference_mode()
    def _component_levels(self, out: Outputs) -> dict[str, float]:
        """Each excess-scored component's level: the excess quantile of its measured map's
        validation pixels at the scoring size (float32, as they are scored)."""
        m, px = self.module, {}
        for _, terms, size in out.batches:
            for kind, mm in m.component_maps(terms, size).items():
                if m.excess_scored(kind):
                    px.setdefault(kind, []).append(mm.float().cpu().numpy().reshape(-1))
        return {k: excess_level(np.concatenate(v), self.excess_quantile) for k, v in px.items()}

    @torch.inference_mode()
    def _terms(self, out: Outputs) -> dict[str, Tensor]:
        """Each component's term over the validation normals, as the module scores it."""
        m, parts = self.module, {}
        for _, terms, size in out.batches:
            maps = m.component_maps(terms, size) if m.terms_need_maps else {}
            for kind, s in m.component_scores(terms, maps).items():
                parts.setdefault(kind, []).append(s)
        return {k: torch.cat(v) for k, v in parts.items()}

    @torch.inference_mode()
    def _map_stats(self, out: Outputs) -> dict:
        """Mean and std (ddof 1) of each component's map over all validation pixels (scoring size)."""
        acc: dict[str, list] = {}
        for _, terms, size in out.batches:
            for kind, mm in self.module.component_maps(terms, size).items():
                mm, a = mm.double(), acc.setdefault(kind, [0.0, 0.0, 0])
                a[0], a[1], a[2] = a[0] + float(mm.sum()), a[1] + float((mm * mm).sum()), a[2] + mm.numel()
        stats = {}
        for kind, (s1, s2, n) in acc.items():
            mean = s1 / max(n, 1)
            var = (s2 - n * mean * mean) / (n - 1) if n > 1 else 0.0
            sd = float(np.sqrt(var)) if var > 0 else 0.0
            stats[kind] = {"mean": mean, "std": sd if sd > 0 and np.isfinite(sd) else 1.0}
        return stats

    @torch.inference_mode()
    def _maps(self, out: Outputs, fitted: dict) -> list[Tensor]:
        """Each validation image's finished map at its own size; fits the statistics of the
        finishing stages on the way (position_stats, then excess_level)."""
        m, maps = self.module, []
        for items, terms, size in out.batches:
            combined = m.combine_maps(m.component_maps(terms, size))
            if combined is None:  # no component has a map (Deep SVDD)
                return []
            maps += [m.smooth_map(combined[j : j + 1], it.orig_size) for j, it in enumerate(items)]
        if "position_stats" in m.needed_statistics():
            acc = PositionAccumulator()
            for x in maps:
                acc.add(x[0, 0])
            self._set(fitted, "position_stats", acc.finish())
            maps = [m.position_map(x) for x in maps]
        if "excess_level" in m.needed_statistics():
            # float32 pixels, as the maps are scored: a re-scored validation image gets the same score
            self._set(fitted, "excess_level", excess_level(_pixels(maps), self.excess_quantile))
        return maps

    @torch.inference_mode()
    def _synthetic(self, out: Outputs, want_maps: bool) -> Synthetic:
        """Scores (and maps at each image's own size, with their masks) of synthetic defects
        drawn on the validation normals (:mod:`igd_fast.score.synthetic`)."""
        m, bs = self.module, self.runner.batch_size
        gen = torch.Generator().manual_seed(SYNTHETIC_SEED)
        k = per_image(len(out.items))
        syn = Synthetic()
        for (items, _, _), x in zip(out.batches, out.inputs, strict=True):
            xd, md = synthetic_defects(x, k, gen)
            for i in range(0, len(xd), bs):
                raw = m.raw(xd[i : i + bs], want_maps or m.map_scored)
                for j in range(raw.score.shape[0]):
                    size = items[(i + j) // k].orig_size
                    amap = m.finish_map(raw.maps[j : j + 1], size) if raw.maps is not None else None
                    syn.scores.append(float(m.image_score_of(amap)[0]) if m.map_scored else float(raw.score[j]))
                    if amap is not None and want_maps:
                        syn.maps.append(amap)
                        syn.masks.append(F.interpolate(md[i + j][None], size=size, mode="nearest")[0, 0] > 0.5)
        return syn

    def _record(self, out: Outputs, scores: list[float], maps: list[Tensor], fitted: dict, syn: Synthetic) -> dict:
        image = image_rule(scores, syn.scores, self.alpha)
        px = _pixels(maps) if maps else np.zeros(1, np.float32)  # no map: a colour scale never used
        # no map (Deep SVDD): 0, never used (no pred_mask without a map)
        pixel = pixel_rule(px, _pixels(syn.maps), np.concatenate([mk.reshape(-1).numpy() for mk in syn.masks])
                           ) if maps and syn.maps else {"pixel_threshold": 0.0}  # fmt: skip
        peaks = [float(x.max()) for x in maps]
        # the earlier pixel rule (split-conformal on each normal's largest pixel), kept for comparison
        pixel["pixel_peak_threshold"] = conformal_threshold(peaks, self.alpha) if peaks else None
        record = {**image, "rule": RULE, "rules": RULES_VERSION, "alpha": self.alpha, "n_validation": len(scores),
                  "validation_scores": dict(zip([it.path for it in out.items], scores, strict=True)),
                  "synthetic_scores": syn.scores, "validation_failed": out.failed, "map_low": float(np.median(px)),
                  "map_high": float(px.max()), "has_maps": bool(maps),
                  "score_scale": score_scale(scores, image["threshold"]), "normalisation": NORMALISATION,
                  **pixel, "pixel_rule": PIXEL_RULE}  # fmt: skip
        record.update(fitted)
        return record


def _pixels(maps: list[Tensor]) -> np.ndarray:
    return np.concatenate([x.float().cpu().numpy().reshape(-1) for x in maps])
