"""The scoring recipe: declared once (flags and checks generated from it), resolved from the
model directory, a preset and flags with each value's source, written by ``train`` and
recorded by every output."""

import argparse
import json
import shutil

import numpy as np
import pytest

from igd_fast.cli import build_parser, main
from igd_fast.cli.presets import CPU_GLOBAL_RECIPE, PRESETS, RECIPES
from igd_fast.score import OPTIONS, Recipe, RecipeError, Scorer
from igd_fast.score.recipe import RECIPE_JSON, SOURCES, Option, declare, read_model_recipe, write_model_recipe
from igd_fast.score.threshold import THRESHOLD_JSON

CAT = "synth"
SCORING_VERBS = ("score", "eval", "export", "serve")


@pytest.fixture(scope="module")
def trained(tiny_pair):
    return tiny_pair


def _copy(trained, tmp_path, recipe: dict | None = None, preset: str | None = None):
    """A copy of the tiny model directory (no recipe.json: trained through the Python API),
    with ``recipe`` written as its recipe.json."""
    d = tmp_path / "model"
    shutil.copytree(trained["model"], d)
    if recipe is not None:
        write_model_recipe(d, Recipe.resolve(preset=recipe), preset)
    return d


# ---------------------------------------------------------------- one declaration


def test_an_option_declared_twice_is_an_error():
    names = [o.name for o in OPTIONS]
    assert len(names) == len(set(names))
    with pytest.raises(ValueError, match="declared twice"):
        declare(Option("map_term", "lr", help="again"))
    assert [o.name for o in OPTIONS] == names  # the refused declaration left nothing behind


def _recipe_actions(verb):
    sub = build_parser()._subparsers._group_actions[0].choices[verb]
    return {a.dest: a for a in sub._actions if a.dest in {o.name for o in OPTIONS}}, sub


@pytest.mark.parametrize("verb", SCORING_VERBS)
def test_the_flags_are_generated_from_the_declarations(verb):
    actions, sub = _recipe_actions(verb)
    want = [o for o in OPTIONS if not (o.network and verb == "export")]
    assert set(actions) == {o.name for o in want}
    for o in want:
        a = actions[o.name]
        assert a.option_strings[0] == o.flag and a.default is None  # None: not given, the model's recipe holds
        assert o.help.split(":")[0] in a.help and f"default {o.show(o.default)}" in a.help
        if o.choices:
            assert tuple(a.choices) == o.choices
        elif o.kind is bool:
            assert isinstance(a, argparse.BooleanOptionalAction)
    # every flag string appears once in the verb's parser
    flags = [s for a in sub._actions for s in a.option_strings]
    assert len(flags) == len(set(flags))


BAD = {"score_norm": "zscore", "latent_weight": -1.0, "local_topk": 0, "map_norm": "max", "map_term": "ssim",
       "recon_colour": "gray", "residual_sigma": float("nan"), "map_sigma": -1.0, "image_score": "mean",
       "excess_quantile": 1.0, "precision": "fp16", "map_components": "both"}  # fmt: skip


@pytest.mark.parametrize("name", [o.name for o in OPTIONS if o.kind is not bool])
def test_one_check_for_the_scorer_and_the_flag(name, tmp_path):
    opt = next(o for o in OPTIONS if o.name == name)
    with pytest.raises(RecipeError, match=name):
        Recipe.resolve(flags={name: BAD[name]})
    with pytest.raises(SystemExit) as e:
        main(["eval", "--model", str(tmp_path), "--data", str(tmp_path), opt.flag, str(BAD[name])])
    assert e.value.code == 2


def test_sources_rise_default_model_preset_flag():
    r = Recipe.resolve(model={"map_term": "maha", "map_sigma": 4.0}, preset={"map_sigma": 2.0},
                       flags={"latent_weight": 0.5})  # fmt: skip
    assert (r["map_term"], r["map_sigma"], r["latent_weight"], r["score_norm"]) == ("maha", 2.0, 0.5, "sum")
    assert (r.source("map_term"), r.source("map_sigma"), r.source("latent_weight"), r.source("score_norm")) == (
        "model", "preset", "flag", "default")  # fmt: skip
    assert set(r.sources.values()) <= set(SOURCES)
    assert Recipe.from_record(json.loads(json.dumps(r.record()))).record() == r.record()


def test_a_value_a_higher_source_made_inapplicable_falls_back_and_is_noted():
    r = Recipe.resolve(model={"map_term": "maha", "residual_sigma": 2.0}, flags={"map_term": "abs"})
    assert r["residual_sigma"] == 0.0 and r.source("residual_sigma") == "default"
    assert "residual_sigma=2.0 (model) dropped" in r.notes[0]
    with pytest.raises(RecipeError, match="residual_sigma=1.0 smooths the residual of map_term maha"):
        Recipe.resolve(flags={"map_term": "abs", "residual_sigma": 1.0})
    with pytest.raises(RecipeError, match="--recon-colour grey applies to --map-term abs or maha"):
        Recipe.resolve(model={"map_term": "lr"}, flags={"recon_colour": "grey"}, style="flag")


def test_every_train_preset_names_a_recipe():
    assert set(RECIPES) == set(PRESETS["train"])
    for values in RECIPES.values():
        Recipe.resolve(preset=values)  # valid together
    # --preset paper's recipe sets nothing: at scoring time it would leave recipe.json in force, so it is not offered
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["score", "--model", "m", "--input", "x", "--out", "o", "--preset", "paper"])
    assert e.value.code == 2


# ---------------------------------------------------------------- the model directory


def test_the_recipe_round_trips_through_the_model_directory(trained, tmp_path):
    d = _copy(trained, tmp_path, RECIPES["cpu-texture"], "cpu-texture")
    on_disk = json.loads((d / RECIPE_JSON).read_text())
    assert on_disk["preset"] == "cpu-texture" and on_disk["sources"]["image_score"] == "preset"
    assert read_model_recipe(d) == {o.name: on_disk["values"][o.name] for o in OPTIONS}
    s = Scorer(d, device="cpu")
    assert (s.recipe["map_term"], s.recipe["residual_sigma"], s.recipe["image_score"], s.recipe["score_norm"]) == (
        "maha", 2.0, "component-excess", "max")  # fmt: skip
    assert s.recipe.source("map_term") == "model" and all(v == "model" for v in s.recipe.sources.values())
    assert s.calibration()["scoring"]["image_score"] == "component-excess"
    (d / RECIPE_JSON).write_text("{not json")
    with pytest.raises(ValueError, match="recipe.json"):
        Scorer(d, device="cpu")


def test_a_model_directory_without_a_recipe_scores_as_before(trained, tmp_path):
    d = _copy(trained, tmp_path)
    assert not (d / RECIPE_JSON).exists()
    s = Scorer(d, device="cpu")
    assert set(s.recipe.sources.values()) == {"default"}
    assert s.scoring == {"score_norm": "sum", "latent_weight": 1.0, "local_topk": 1, "map_sigma": 0.0,
            "map_components": "all",
                         "map_norm": "sum", "map_term": "lr", "map_position": False, "image_score": "terms",
                         "residual_sigma": 0.0, "excess_quantile": 0.95, "recon_colour": "rgb"}  # fmt: skip
    paths = trained["test"][:3]
    got = list(s.score_paths(paths))
    for r in got:
        assert r.score == pytest.approx(r.s_global + r.s_local, rel=1e-6, abs=1e-7)  # the paper's sum
    # a recipe.json holding the defaults scores the same, bit for bit
    write_model_recipe(d, Recipe.resolve())
    again = list(Scorer(d, device="cpu").score_paths(paths))
    assert [r.score for r in again] == [r.score for r in got]
    assert all(np.array_equal(a.map, b.map) for a, b in zip(again, got, strict=True))


def test_an_explicit_flag_overrides_the_model_recipe_and_is_recorded(trained, tmp_path):
    d = _copy(trained, tmp_path, CPU_GLOBAL_RECIPE, "cpu")
    out = tmp_path / "ev"
    assert main(["eval", "--model", str(d), "--data", str(trained["data"]), "--category", CAT, "--out", str(out),
                 "--map-sigma", "2", "--no-progress", "--device", "cpu", "--workers", "0"]) == 0  # fmt: skip
    rep = json.loads((out / "report.json").read_text())["recipe"]
    assert rep["values"]["map_term"] == "maha" and rep["sources"]["map_term"] == "model"
    assert rep["values"]["map_sigma"] == 2.0 and rep["sources"]["map_sigma"] == "flag"
    assert rep["sources"]["score_norm"] == "model"
    assert json.loads((d / THRESHOLD_JSON).read_text())["scoring"]["map_sigma"] == 2.0
    # score's summary, and --preset over a model without a recipe
    bare, sc = _copy(trained, tmp_path / "b"), tmp_path / "sc"
    assert main(["score", "--model", str(bare), "--input", str(trained["test"][0]), "--out", str(sc), "--preset",
                 "cpu-texture", "--no-overlays", "--no-progress", "--device", "cpu"]) == 0  # fmt: skip
    summ = json.loads((sc / "summary.json").read_text())
    assert summ["recipe"]["sources"]["image_score"] == "preset" and summ["scoring"]["image_score"] == "map-excess"
    assert summ["recipe"]["sources"]["latent_weight"] == "default"
    # (the pair has no defect model: --preset cpu-texture names the local model's own recipe, as train writes it)


def test_contradicting_flags_exit_2_naming_them(trained, tmp_path, capsys):
    code = main(["score", "--model", str(trained["model"]), "--input", str(trained["test"][0]), "--out",
                 str(tmp_path / "o"), "--map-term", "abs", "--residual-sigma", "1"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "--residual-sigma 1 smooths the residual of --map-term maha, not of --map-term abs" in err
