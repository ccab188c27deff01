"""The scoring recipe on the command line: one flag per option of
:data:`igd_fast.score.recipe.OPTIONS` (type, choices, checks and help from its declaration),
``--preset`` for a preset's recipe, and the recipe they resolve to with the model
directory's ``recipe.json`` under them (``score``, ``eval`` and ``export`` share this)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..score.recipe import OPTIONS, Recipe, RecipeError, read_model_recipe
from ._args import UsageError
from .presets import RECIPES, recipe_text, train_recipe


def add_recipe_flags(p: argparse.ArgumentParser, network: bool = True) -> None:
    """Every scoring option as a flag (``network``: with the networks' options, ``--precision``).
    A flag left out is None after parsing: the model directory's recipe (or the default) holds."""
    g = p.add_argument_group("scoring recipe (default: the model directory's recipe.json, written by train; without "
                             "one the paper's scoring; a flag overrides it, and the outputs record each value's "
                             "source; no retraining)")  # fmt: skip
    for o in OPTIONS:
        if o.network and not network:
            continue
        text = f"{o.help} (default {o.show(o.default)})".replace("%", "%%")
        if o.kind is bool:
            g.add_argument(o.flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            g.add_argument(o.flag, type=o.parse, choices=o.choices or None, default=None, metavar=_metavar(o),
                           help=text)  # fmt: skip
    # a recipe that sets nothing (paper's) would leave the model's recipe.json in force: not offered here
    names = sorted(n for n, values in RECIPES.items() if values)
    shown = "; ".join(f"{n}: {recipe_text(n)}" for n in names)
    g.add_argument("--preset", choices=names, default=None,
                   help=f"the scoring recipe a train preset names ({shown}), over the model directory's (for a model "
                        "trained before recipes were saved); flags override it")  # fmt: skip


def _metavar(o) -> str | None:
    return None if o.choices else o.name.split("_")[-1].upper()


def given_options(args: argparse.Namespace) -> dict:
    """The scoring options given as flags."""
    return {o.name: getattr(args, o.name) for o in OPTIONS if getattr(args, o.name, None) is not None}


def resolve_recipe(args: argparse.Namespace) -> Recipe:
    """The recipe of ``args.model``'s recipe.json, ``--preset`` and the flags (UsageError
    naming what does not go together)."""
    try:
        model = read_model_recipe(args.model)
    except ValueError as e:
        raise UsageError(f"--model {args.model}: {e}") from None
    try:
        return Recipe.resolve(model, _preset_recipe(args), given_options(args), style="flag")
    except RecipeError as e:
        raise UsageError(str(e)) from None


def _preset_recipe(args: argparse.Namespace) -> dict | None:
    """``--preset``'s recipe for the models the directory holds, as ``train`` would write it
    (a texture model without its defect model: the local model's own recipe)."""
    from ..score.components import component_files  # torch: not at parser build time

    if not args.preset:
        return None
    try:
        kinds = tuple(component_files(args.model)) if Path(args.model).is_dir() else ()
    except FileNotFoundError:
        kinds = ()  # the Scorer names what is missing
    return train_recipe(args.preset, kinds) if kinds else RECIPES[args.preset]
