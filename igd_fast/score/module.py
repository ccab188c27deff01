"""The scoring module: a batch of images -> each component's term and map -> the combined
map -> the image score. The one implementation the Scorer runs and ``export`` traces.

Stages, each as the recipe sets it (:mod:`igd_fast.score.recipe`):
  terms   each component's per-image term (``image_score="component-excess"``: an IGD
          component's is the excess of its own map over its level, ``component_levels``);
          combined as their sum (the paper), the sum or the largest of their
          validation-normal z-scores (``score_norm="standard"`` / ``"max"``: ``term_stats``)
  maps    each component's map, measured (``map_term="maha"``: the residual's squared
          Mahalanobis distance under ``channel_stats``), brought to the scoring size
          (bilinear), combined as the sum or the sum of pixel z-scores (``map_stats``)
  finish  at each image's own size (bilinear): ``map_sigma`` smoothing, then per-position
          standardisation (``map_position``: ``position_stats``)
  score   the terms' combination, or the finished map's maximum / excess over
          ``excess_level`` (``image_score``)
The statistics are fitted on validation normals by :class:`igd_fast.score.calibrate.Calibrator`
and set with :meth:`ScoringModule.set_statistics`; a stage that needs one that is not set
raises, it never runs half-calibrated.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..reference.resize import bilinear
from .components import Component, Terms
from .maps import gaussian_smooth
from .residual import channel_distance, standardise_positions

STATISTICS = ("channel_stats", "map_stats", "component_levels", "term_stats", "position_stats", "excess_level")


class NotCalibratedError(RuntimeError):
    """A stage ran before the statistic it needs was set."""


@dataclass
class BatchScores:
    """Scores of N images: the image score, each component's term, the map (None: not
    asked for, or no component has one)."""

    score: Tensor
    terms: dict[str, Tensor]
    maps: Tensor | None

    def term(self, kind: str) -> Tensor:
        """A component's term (zeros when the model directory has no such component)."""
        return self.terms[kind] if kind in self.terms else torch.zeros_like(self.score)

    @property
    def s_global(self) -> Tensor:
        return self.term("global")

    @property
    def s_local(self) -> Tensor:
        return self.term("local")


class ScoringModule(nn.Module):
    """Components -> terms -> maps -> image score, as ``recipe`` (a mapping of the scoring
    options) sets it. ``forward(x)`` scores N×3×S×S images taken at their own size."""

    def __init__(self, components: Mapping[str, Component], recipe: Mapping[str, Any]) -> None:
        super().__init__()
        if not components:
            raise ValueError("a scoring module needs at least one component")
        self._kinds = tuple(components)
        # held under "<kind>_part": "global" is a Python keyword, which traced code cannot name
        self.parts = nn.ModuleDict({f"{k}_part": c for k, c in components.items()})
        for name in ("score_norm", "map_norm", "map_term", "map_sigma", "map_position", "image_score",
                     "map_components"):
            setattr(self, name, recipe[name])
        if self.map_components != "all" and self.map_components not in components:
            raise ValueError(f"map_components {self.map_components!r}: the model directory has no such component "
                             f"(it holds {', '.join(components)})")  # fmt: skip
        if self.image_score == "component-excess" and self.map_components != "all":
            raise ValueError("image_score component-excess scores every component's own map: it needs "
                             f"map_components all, not {self.map_components!r}")  # fmt: skip
        # images are read at the size of the component that keeps their aspect (the defect
        # model's), else at the first component's (the global model's); the others resize
        aspect = [c for c in components.values() if c.keeps_aspect]
        self.keep_aspect = bool(aspect)
        self.image_size = (aspect or list(components.values()))[0].image_size
        self.stats: dict[str, Any] = {}

    @property
    def kinds(self) -> tuple[str, ...]:
        return self._kinds

    @property
    def components(self) -> dict[str, Component]:
        """Each component by kind ("global", "local"), in scoring order."""
        return {k: self.parts[f"{k}_part"] for k in self._kinds}

    @property
    def map_scored(self) -> bool:
        """Whether the image score comes from the finished map."""
        return self.image_score in ("map-max", "map-excess")

    def excess_scored(self, kind: str) -> bool:
        """Whether ``kind``'s term is the excess of its own map (``component-excess``): an IGD
        component's (the defect model's term is a statistic of its map already)."""
        c = self.components[kind]
        return self.image_score == "component-excess" and c.residual_map and c.has_map

    @property
    def terms_need_maps(self) -> bool:
        """Whether some component's term is its map's excess (the maps are measured even when
        no map is asked for)."""
        return any(self.excess_scored(k) for k in self.kinds)

    # ------------------------------------------------------------ statistics

    def needed_statistics(self) -> tuple[str, ...]:
        """The statistics this recipe needs, in the order they are fitted."""
        with_map = sum(c.has_map for k, c in self.components.items() if self.maps_from(k))
        need = {"channel_stats": self.map_term == "maha", "map_stats": self.map_norm == "standard" and with_map > 1,
                "component_levels": self.terms_need_maps,
                "term_stats": self.score_norm != "sum", "position_stats": self.map_position,
                "excess_level": self.image_score == "map-excess"}  # fmt: skip
        return tuple(k for k in STATISTICS if need[k])

    def missing_statistics(self) -> list[str]:
        return [k for k in self.needed_statistics() if k not in self.stats]

    def set_statistics(self, stats: Mapping[str, Any]) -> None:
        """Set the fitted statistics named in ``stats`` (others in it are ignored: a whole
        calibration record may be passed); tensors are made once, here."""
        for name in STATISTICS:
            if name in stats and stats[name] is not None:
                self.stats[name] = _as_tensors(name, stats[name])

    def clear_statistics(self) -> None:
        self.stats.clear()  # in place: copies of this module (exportable, bf16) share it

    def _stat(self, name: str) -> Any:
        if name not in self.stats:
            raise NotCalibratedError(f"the scoring module has no {name} yet: calibrate it on validation normals "
                                     "(Scorer.calibration) first")  # fmt: skip
        return self.stats[name]

    # ------------------------------------------------------------ stages

    def maps_from(self, kind: str) -> bool:
        """Whether ``kind``'s map is part of the combined map (``map_components``)."""
        return self.map_components in ("all", kind)

    def terms(self, x: Tensor, want_maps: bool = True) -> dict[str, Terms]:
        """Each component's term and raw map (maha: the residual) at its own resolution
        (no map from a component that ``map_components`` leaves out)."""
        return {k: c(x, want_maps and self.maps_from(k)) for k, c in self.components.items()}

    def measure(self, kind: str, m: Tensor) -> Tensor:
        """A component's raw map as a map: maha's distance; the other map terms as they are."""
        if self.map_term != "maha" or not self.components[kind].residual_map:
            return m
        return channel_distance(m, self._stat("channel_stats")[kind])

    def component_maps(self, terms: Mapping[str, Terms], size: tuple[int, int]) -> dict[str, Tensor]:
        """Each component's measured map at ``size`` (components without a map left out)."""
        out = {}
        for kind, t in terms.items():
            if t.map is None:
                continue
            m = self.measure(kind, t.map)
            if tuple(m.shape[-2:]) != tuple(size):
                m = bilinear(m, size)
            out[kind] = m
        return out

    def component_scores(self, terms: Mapping[str, Terms], maps: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Each component's term; an excess-scored one's (:meth:`excess_scored`) is the mean of
        max(map - level, 0) over its measured map at the scoring size (``maps``), its own level the
        validation normals' ``excess_quantile`` of those pixels."""
        out = {k: t.score for k, t in terms.items()}
        for kind in filter(self.excess_scored, self.kinds):
            level = self._stat("component_levels")[kind]
            out[kind] = _excess(maps[kind], level).to(out[kind].dtype)
        return out

    def combine_terms(self, scores: Mapping[str, Tensor]) -> Tensor:
        if self.score_norm == "sum":
            return _total(list(scores.values()))
        st = self._stat("term_stats")
        z = [(s - st[k]["mean"]) / st[k]["std"] for k, s in scores.items() if k in st]
        if self.score_norm == "max":  # any one component's evidence counts whole
            return torch.stack(z).amax(0)
        return _total([torch.zeros_like(next(iter(scores.values()))), *z])

    def combine_maps(self, maps: Mapping[str, Tensor]) -> Tensor | None:
        # one map (or a variant without the other's, Deep SVDD): as it is; none: None
        if len(maps) < 2 or self.map_norm == "sum":
            return _total(list(maps.values())) if maps else None
        st = self._stat("map_stats")
        return _total([(m - st[k]["mean"]) / st[k]["std"] for k, m in maps.items()])

    def raw(self, x: Tensor, want_maps: bool = True) -> BatchScores:
        """The terms' combined score and the combined map at the scoring size, before the
        stages at each image's own size (what a runner finishes per image)."""
        by_map = self.terms_need_maps
        terms = self.terms(x, want_maps or by_map)
        cmaps = self.component_maps(terms, x.shape[-2:]) if want_maps or by_map else {}
        scores = self.component_scores(terms, cmaps)
        maps = self.combine_maps(cmaps) if want_maps else None
        return BatchScores(self.combine_terms(scores), scores, maps)

    def smooth_map(self, m: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """N×1×h×w maps at ``size`` (bilinear; None: as they are), smoothed by ``map_sigma``."""
        if size is not None and tuple(m.shape[-2:]) != tuple(size):
            m = bilinear(m, size)
        return gaussian_smooth(m, self.map_sigma) if self.map_sigma > 0 else m

    def position_map(self, m: Tensor) -> Tensor:
        """Smoothed maps standardised per position (``map_position``), else as they are."""
        return standardise_positions(m, self._stat("position_stats")) if self.map_position else m

    def finish_map(self, m: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """The final map at ``size``: :meth:`smooth_map`, then :meth:`position_map`."""
        return self.position_map(self.smooth_map(m, size))

    def image_score_of(self, m: Tensor) -> Tensor:
        """N float64 image scores of N×1×H×W finished maps (``map-max`` / ``map-excess``)."""
        if self.image_score == "map-max":
            return m.amax((1, 2, 3)).double()
        return _excess(m, self._stat("excess_level"))

    def forward(self, x: Tensor, want_maps: bool = True) -> BatchScores:
        """N×3×S×S images at the scoring size, taken as their own size: the final score and map."""
        out = self.raw(x, want_maps or self.map_scored)
        if out.maps is None:
            return out
        maps = self.finish_map(out.maps)
        score = self.image_score_of(maps).to(out.score.dtype) if self.map_scored else out.score
        return BatchScores(score, out.terms, maps if want_maps else None)

    # ------------------------------------------------------------ variants of this module

    def with_components(self, components: Mapping[str, Component]) -> ScoringModule:
        """A copy with some components replaced (bf16 or compiled networks); statistics shared."""
        out = copy.copy(self)
        out._modules = dict(self._modules)
        out.parts = nn.ModuleDict({f"{k}_part": components.get(k, c) for k, c in self.components.items()})
        return out

    def exportable(self) -> ScoringModule:
        """A copy on plain PyTorch ops that an exporter can trace; statistics shared."""
        return self.with_components({k: c.exportable() for k, c in self.components.items()})


def _excess(m: Tensor, level) -> Tensor:
    """N float64 means of max(map - level, 0) over N×1×H×W maps (map-excess's image score)."""
    return (m.double() - level).clamp_min(0.0).mean((1, 2, 3))


def _total(parts: list[Tensor]) -> Tensor:
    out = parts[0]
    for p in parts[1:]:
        out = out + p
    return out


def _as_tensors(name: str, value: Any) -> Any:
    # the statistics as float32 tensors once, not per batch (export bakes them in as constants)
    if name == "channel_stats":
        return {k: {f: torch.as_tensor(st[f], dtype=torch.float32) for f in ("mean", "precision")}
                for k, st in value.items()}  # fmt: skip
    if name == "position_stats":
        return {f: torch.as_tensor(value[f], dtype=torch.float32) for f in ("mean", "std")}
    return value
