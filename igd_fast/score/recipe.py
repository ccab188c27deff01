"""The scoring recipe: every scoring option declared once, and the values a model is scored with.

An :class:`Option` is one declaration (name, type, default, valid values, help); the
``score`` / ``eval`` / ``export`` flags, the Scorer's keyword arguments and their checks are
all made from :data:`OPTIONS`. A :class:`Recipe` holds a value for every option and where it
came from, by rising precedence:

  ``default``  the option's own default (the paper's scoring)
  ``model``    the model directory's ``recipe.json``, written by ``igd-fast train``
  ``preset``   a preset's recipe named at scoring time (``--preset``)
  ``flag``     given explicitly: a command-line flag or a Scorer keyword argument

Two options depend on ``map_term`` (see :data:`RULES`). When a value of a lower source no
longer applies because a higher one changed ``map_term`` (a model's ``residual_sigma=2`` under
an explicit ``--map-term abs``), it falls back to its default and the recipe notes why;
contradictory values from one source are an error.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..limits import LimitError, check_sigma
from ..outputs import atomic_write_bytes

RECIPE_JSON = "recipe.json"
FORMAT = "igd_fast.recipe/1"
SOURCES = ("default", "model", "preset", "flag")  # rising precedence
SCORE_NORMS = ("sum", "standard")
TERM_NORMS = (*SCORE_NORMS, "max")
MAP_TERMS = ("lr", "abs", "maha")
RESIDUAL_MAP_TERMS = ("abs", "maha")  # the maps recon_colour applies to
RECON_COLOURS = ("auto", "rgb", "grey", "damped")
IMAGE_SCORES = ("terms", "map-max", "map-excess", "component-excess")
PRECISIONS = ("fp32", "bf16", "auto")
_UNSET = object()


class RecipeError(ValueError):
    """A scoring option's value that is not valid, alone or with the others."""


@dataclass(frozen=True)
class Option:
    """One scoring option. ``low``/``high`` bound a number (``open`` ends excluded);
    ``legacy`` is its value before it existed (what a threshold cache without it was made
    with); ``network`` options act on the networks, not on the maps (not in the cache key)."""

    name: str
    default: Any
    help: str
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    open: bool = False
    legacy: Any = _UNSET
    network: bool = False
    limit: Callable[[float, str], float] | None = None  # a memory limit (igd_fast.limits): LimitError past it

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def kind(self) -> type:
        return type(self.default)

    @property
    def legacy_value(self) -> Any:
        return self.default if self.legacy is _UNSET else self.legacy

    def check(self, value: Any) -> Any:
        """``value`` as this option's type; RecipeError naming the option when it is not valid."""
        if self.choices:
            if value not in self.choices:
                raise RecipeError(f"{self.name} must be one of {self.choices}, got {value!r}")
            return value
        if self.kind is bool:
            if not isinstance(value, bool):
                raise RecipeError(f"{self.name} must be True or False, got {value!r}")
            return value
        return self._number(value)

    def _number(self, value: Any) -> Any:
        try:
            v = self.kind(value)
            ok = isinstance(value, (int, float, str)) and not isinstance(value, bool) and math.isfinite(v)
        except (TypeError, ValueError):
            ok = False
        if ok and self.kind is int and v != float(value):
            ok = False
        if ok and self.low is not None:
            ok = v > self.low if self.open else v >= self.low
        if ok and self.high is not None:
            ok = v < self.high if self.open else v <= self.high
        if not ok:
            raise RecipeError(f"{self.name} must be {self.range_text()}, got {value!r}")
        if self.limit is not None:
            try:
                self.limit(v, self.name)
            except LimitError as e:
                raise RecipeError(str(e)) from None
        return v

    def range_text(self) -> str:
        what = "an integer" if self.kind is int else "a finite number"
        if self.low is not None and self.high is not None:
            ends = "()" if self.open else "[]"
            return f"{what} in {ends[0]}{self.low:g}, {self.high:g}{ends[1]}"
        return f"{what} >= {self.low:g}" if self.low is not None else what

    def parse(self, text: str) -> Any:
        """The argparse ``type`` of this option's flag."""
        import argparse

        try:
            return self.check(self.kind(text) if self.kind in (int, float) else text)
        except (TypeError, ValueError) as e:
            raise argparse.ArgumentTypeError(str(e).removeprefix(f"{self.name} ")) from None

    def show(self, value: Any) -> str:
        if self.kind is bool:
            return "on" if value else "off"
        return f"{value:g}" if isinstance(value, float) else str(value)


OPTIONS: tuple[Option, ...] = ()


def declare(option: Option) -> Option:
    """Add ``option`` to :data:`OPTIONS`; a name declared twice is an error."""
    global OPTIONS
    if any(o.name == option.name for o in OPTIONS):
        raise ValueError(f"scoring option {option.name!r} is declared twice")
    OPTIONS = (*OPTIONS, option)
    return option


declare(Option("score_norm", "sum", choices=TERM_NORMS,
               help="sum: s = s_G + s_L (the paper); standard: each term standardised by its validation-normal "
                    "mean/std before summing; max: the largest of the standardised terms (one component's "
                    "evidence counts whole)"))  # fmt: skip
declare(Option("latent_weight", 1.0, low=0.0, help="weight of l_h in each model's term, 0 drops it"))
declare(Option("local_topk", 1, low=1, help="s_L = mean of the K largest patch terms, 1 = max"))
declare(Option("map_norm", "sum", choices=SCORE_NORMS,
               help="sum: map = global map + local map (the paper); standard: each standardised by its "
                    "validation-normal pixel mean/std before summing"))  # fmt: skip
declare(Option("map_term", "lr", choices=MAP_TERMS,
               help="lr: each map is the l_r map (the paper); abs: its absolute-error part |x - x_hat| / L alone; "
                    "maha: the squared Mahalanobis distance of the residual x - x_hat over the colour channels, "
                    "under its mean/covariance on the validation normals"))  # fmt: skip
declare(Option("recon_colour", "auto", choices=RECON_COLOURS, legacy="rgb",
               help="with map_term abs/maha: grey: the residual is taken against the reconstruction's nearest grey "
                    "image, so only the input's colour counts; damped: the reconstruction's colour is kept at "
                    "sqrt(ridge) = 0.1, so maha weighs it like the grey residual; auto: damped when every "
                    "validation normal is grey (R = G = B: the AE of grey data never learns colour); rgb: the "
                    "reconstruction as is"))  # fmt: skip
declare(Option("residual_sigma", 0.0, low=0.0, limit=check_sigma,
               help="with map_term maha: Gaussian smoothing of the residual before its distance, sigma in pixels "
                    "of the model's input, 0 = none; the AE's pixel noise averages out, a defect's colour does "
                    "not"))  # fmt: skip
declare(Option("map_sigma", 0.0, low=0.0, limit=check_sigma,
               help="Gaussian smoothing of each map, sigma in pixels of the original image, 0 = none"))
declare(Option("map_components", "all", choices=("all", "global", "local", "defect"),
               help="whose maps form the anomaly map: all (every component's, combined by map_norm) or one "
                    "component's (its term still counts in the image score)"))  # fmt: skip
declare(Option("map_position", False,
               help="standardise each position of the (smoothed) map by the validation normals' mean/std there, "
                    "which removes what every normal image shows (borders, hard parts)"))  # fmt: skip
declare(Option("image_score", "terms", choices=IMAGE_SCORES,
               help="terms: s = s_G + s_L of the options above (the paper); map-max: the maximum of the final "
                    "map; map-excess: the mean over its pixels of max(map - t, 0), t = the validation normals' "
                    "excess_quantile of map pixels; component-excess: the terms, each IGD model's being the "
                    "map-excess of its own map (at the scoring size, t its own), combined by score_norm"))  # fmt: skip
declare(Option("excess_quantile", 0.95, low=0.0, high=1.0, open=True,
               help="with image_score map-excess: the quantile of the validation normals' map pixels above which "
                    "a pixel counts"))  # fmt: skip
declare(Option("precision", "fp32", choices=PRECISIONS, network=True,
               help="the networks' arithmetic (the loss kernels stay fp32): bf16 needs avx512_bf16/AMX or a bf16 "
                    "GPU; auto = bf16 where the hardware has it and, scoring the validation normals and the "
                    "calibration's synthetic defects with the fp32 calibration, no image decision flips, the "
                    "normals' scores move <= 10 % of their std and <= 0.1 % of pixels flip pred_mask; else fp32; "
                    "the decision is recorded in the output"))  # fmt: skip

BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}


@dataclass(frozen=True)
class Rule:
    """``option``'s values ``when`` holds need ``on`` to be one of ``allowed``."""

    option: str
    when: Callable[[Any], bool]
    on: str
    allowed: tuple
    verb: str
    contrast: str = "not to"

    def message(self, values: Mapping[str, Any], style: str) -> str:
        def show(name: str, v: Any = _UNSET) -> str:
            if style == "flag":
                return BY_NAME[name].flag + ("" if v is _UNSET else f" {BY_NAME[name].show(v)}")
            return name + ("" if v is _UNSET else f"={v!r}")

        return (f"{show(self.option, values[self.option])} {self.verb} {show(self.on)} {' or '.join(self.allowed)}, "
                f"{self.contrast} {show(self.on, values[self.on])}")  # fmt: skip


RULES = (
    Rule("residual_sigma", lambda v: v > 0, "map_term", ("maha",), "smooths the residual of", "not of"),
    Rule("recon_colour", lambda v: v in ("grey", "damped"), "map_term", RESIDUAL_MAP_TERMS, "applies to"),
)


class Recipe(Mapping[str, Any]):
    """A value for every option of :data:`OPTIONS` and its source (``SOURCES``); read it as
    a mapping (``recipe["map_term"]``). Build one with :meth:`resolve`."""

    def __init__(self, values: Mapping[str, Any], sources: Mapping[str, str], notes: tuple[str, ...] = ()) -> None:
        self._values = {o.name: o.check(values[o.name]) for o in OPTIONS}
        self._sources = {o.name: sources[o.name] for o in OPTIONS}
        if set(self._sources.values()) - set(SOURCES):
            raise ValueError(f"recipe sources must be among {SOURCES}, got {self._sources}")
        self.notes = tuple(notes)

    @classmethod
    def resolve(cls, model: Mapping[str, Any] | None = None, preset: Mapping[str, Any] | None = None,
                flags: Mapping[str, Any] | None = None, style: str = "python") -> Recipe:  # fmt: skip
        """The recipe of these layers (each a mapping of option names; later ones win).
        ``style`` spells options in messages as Python names or as ``flag``s."""
        values = {o.name: o.default for o in OPTIONS}
        sources = dict.fromkeys(values, "default")
        for source, layer in (("model", model), ("preset", preset), ("flag", flags)):
            for name, v in (layer or {}).items():
                if name not in BY_NAME:
                    raise RecipeError(f"unknown scoring option {name!r} (the options: {', '.join(BY_NAME)})")
                values[name], sources[name] = BY_NAME[name].check(v), source
        notes = _settle(values, sources, style)
        return cls(values, sources, notes)

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def source(self, name: str) -> str:
        return self._sources[name]

    @property
    def sources(self) -> dict[str, str]:
        return dict(self._sources)

    def override(self, flags: Mapping[str, Any], style: str = "python") -> Recipe:
        """This recipe with ``flags`` given explicitly on top."""
        values, sources = dict(self._values), dict(self._sources)
        for name, v in flags.items():
            if name not in BY_NAME:
                raise RecipeError(f"unknown scoring option {name!r} (the options: {', '.join(BY_NAME)})")
            values[name], sources[name] = BY_NAME[name].check(v), "flag"
        return Recipe(values, sources, self.notes + _settle(values, sources, style))

    def scoring(self) -> dict[str, Any]:
        """The options that shape scores and maps (the threshold cache's key); recon_colour as
        its legacy value where it has no effect, so those caches stay valid."""
        out = {o.name: self._values[o.name] for o in OPTIONS if not o.network}
        if out["map_term"] not in RESIDUAL_MAP_TERMS:
            out["recon_colour"] = BY_NAME["recon_colour"].legacy_value
        return out

    def record(self) -> dict:
        """What outputs record: every value, its source, and the notes of :meth:`resolve`."""
        return {"values": dict(self._values), "sources": dict(self._sources), "notes": list(self.notes)}

    @classmethod
    def from_record(cls, rec: Mapping) -> Recipe:
        """The recipe of :meth:`record` (options it lacks at their defaults)."""
        values = {o.name: rec.get("values", {}).get(o.name, o.default) for o in OPTIONS}
        sources = {o.name: rec.get("sources", {}).get(o.name, "default") for o in OPTIONS}
        return cls(values, sources, tuple(rec.get("notes", ())))

    def __repr__(self) -> str:
        return f"Recipe({', '.join(f'{k}={v!r}' for k, v in self._values.items())})"


def legacy_scoring() -> dict[str, Any]:
    """The scoring options as they were before each existed (a cache without a record of one was made so)."""
    return {o.name: o.legacy_value for o in OPTIONS if not o.network}


def _settle(values: dict, sources: dict, style: str) -> tuple[str, ...]:
    """Apply :data:`RULES`: a value that a higher source made inapplicable returns to its
    default (noted); one the same or a higher source contradicts is a RecipeError."""
    notes = []
    rank = SOURCES.index
    for rule in RULES:
        if not rule.when(values[rule.option]) or values[rule.on] in rule.allowed:
            continue
        if rank(sources[rule.option]) >= rank(sources[rule.on]):
            raise RecipeError(rule.message(values, style))
        notes.append(f"{rule.option}={values[rule.option]!r} ({sources[rule.option]}) dropped: it applies to "
                     f"{rule.on} {' or '.join(rule.allowed)}, and {rule.on}={values[rule.on]!r} "
                     f"({sources[rule.on]})")  # fmt: skip
        values[rule.option], sources[rule.option] = BY_NAME[rule.option].default, "default"
    return tuple(notes)


# ---------------------------------------------------------------- the model directory's recipe


def read_model_recipe(model_dir: str | Path) -> dict[str, Any] | None:
    """The option values of ``model_dir/recipe.json``, or None when it has none (a model
    trained before recipes were saved: it scores with the defaults). A damaged file or
    an unknown option is a ValueError naming the file."""
    p = Path(model_dir) / RECIPE_JSON
    if not p.is_file():
        return None
    try:
        d = json.loads(p.read_text())
        values = d["values"]
        if not isinstance(values, dict):
            raise TypeError("'values' is not an object")
        unknown = set(values) - set(BY_NAME)
        if unknown:
            raise ValueError(f"unknown scoring options {sorted(unknown)} (written by a newer igd_fast?)")
        return {k: BY_NAME[k].check(v) for k, v in values.items()}
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"cannot use the scoring recipe {p}: {e}") from None


def write_model_recipe(model_dir: str | Path, recipe: Recipe, preset: str | None = None) -> Path:
    """Write ``recipe`` (every value, and whether it came from ``preset`` or the defaults)
    as ``model_dir/recipe.json``, atomically."""
    p = Path(model_dir) / RECIPE_JSON
    rec = {"format": FORMAT, "preset": preset, "values": dict(recipe), "sources": recipe.sources}
    data = json.dumps(rec, indent=2).encode()
    atomic_write_bytes(p, lambda f: f.write(data))
    return p
