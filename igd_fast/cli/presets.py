"""``--preset NAME``: named sets of flag values. A flag the user gives always wins.

A flag a preset may set is declared with ``default=Default(value)``: after parsing, a
value that is still a :class:`Default` was not given on the command line (argparse
leaves a non-string default object as it is), so :func:`apply_preset` can tell "not
given" from "given the default value" without comparing values.
"""

from __future__ import annotations

import argparse

# --preset cpu: a small recipe for 2 CPU cores, ~60 training images of 256².
# Starting values (issue 13): the settings of docs/results/textures_dev.md recipe R128 (128²,
# width 16, one block per stage, 32 random patches per image and step; the local
# model's 4 MS-SSIM weights for the global model, as 5 scales with the 11×11 window
# do not fit 128²), measured there on textures_dev grass / moon on the shared 2-core
# AMD EPYC machine (12 epochs: 73 s igd training per category). Epochs: 36 beat 8 on
# both textures (grass image/pixel AUROC 0.598/0.678 vs 0.530/0.606, moon 0.740/0.885
# vs 0.719/0.868; ~2 min of training each; docs/results/textures_dev.md), and SSL
# pre-training did not beat scratch at the same time, so the preset trains from scratch.
# ρ = 1 (absolute error alone; paper 0.15): on juice_bottle at these 36 epochs, with both
# models, image AUROC went from 0.688 / 0.715 / 0.766 to 0.726 / 0.798 / 0.868 at seeds
# 0 / 1 / 2 (section 14). The global model alone (section 15): there the local model's term
# and map were noise (s_L image AUROC 0.54, local map pixel AUROC 0.46 at seed 0), so
# s_G + s_L scored 0.745 where s_G alone scored 0.875 (seeds 1 / 2: 0.898 / 0.890, pixel
# 0.871-0.875 under the paper's scoring), in half the training time.
# The defect model (model "global+defect"; issue 28): the global model sees colour and layout,
# not structure (mvtec_bottle pixel AUROC 0.725, AUPRO 0.401 alone); the defect model, trained on
# synthetic defects at each image's aspect (longer side 224, 1000 steps), brought mvtec_bottle at
# seed 0 to image / pixel AUROC / AUPRO 0.980 / 0.944 / 0.799 (docs/results/mvtec_bottle.md).
# Textures: --preset cpu-texture for colour defects (docs/results/textures_dev.md).
CPU_TRAIN = {
    "model": "global+defect",
    "image_size": 128,
    "width": 16,
    "blocks": [1, 1, 1, 1],
    "global_weights": [0.0516, 0.3295, 0.3463, 0.2726],
    "patches_per_image": 32,
    "rho": 1.0,
    "epochs": 36,
}
# --preset cpu-texture: textures (a surface with no global layout, defects anywhere) on 2
# CPU cores, ~60 training images of 256²: the local model alone at the photos' own 256²
# (the scratches are 1-3 px wide: 128² halves them), all its patches in reach (64 random
# of 225 per image and step), ρ = 1 (absolute error alone: the (1 - MS-SSIM) part makes
# the AE output texture-like noise, docs/results/textures_dev.md) and Adam lr 1e-3
# (at 1e-4 the 256² model did not learn the texture in 36 epochs: grass/moon image AUROC
# ~0.63/0.76 against 0.83/0.97 at 1e-3, same scoring). Score it with --map-term maha
# --residual-sigma 2 --image-score map-excess (section 10). Not for objects: on
# juice_bottle the local model alone gave image AUROC 0.40.
# The cosine learning-rate schedule and 72 epochs (section 11): with cosine, igd's image AUROC
# at seeds 0/1/2 went from grass 0.828/0.772/0.828 to 0.863/0.846/0.862 and moon
# 0.966/0.581/0.999 to 0.977/0.731/0.971 at the same 36 epochs and scoring; 72 epochs then
# lifted grass seeds 0/1 to 0.916/0.894 (moon seed 1: 0.707), ~7.5 min of igd training.
# Scored with the damped reconstruction colour that --recon-colour auto picks for these grey
# photos (section 13): image AUROC grass 0.977/0.958/0.997, moon 0.988/0.923/0.995, pixel
# AUROC 0.976-0.998 at seeds 0/1/2.
# The defect model beside it (model "local+defect", issue 28): the local model's map sees colour, not
# structure (grey scratches and stains on textures_dev grass_grey / moon_grey: image AUROC 0.595 /
# 0.658, pixel 0.634 / 0.854), the defect model sees structure (pixel 0.937 / 0.918) but not every
# colour defect; scored together (CPU_TEXTURE_RECIPE) they keep the better of each
# (docs/results/textures_dev.md).
# The local model in bf16 autocast with channels_last (where the CPU has bf16 instructions; elsewhere
# fp32, as the defect model decides): 11 -> 22 images/s on the Zen 4 VM, 7.5-8 -> 4.2 min of its
# training, peak RSS 1.7-1.9 -> 1.0-1.2 GB; the local model alone at seeds 0 / 1 / 2, image AUROC
# grass 0.930 / 0.966 / 0.995 and moon 0.992 / 0.970 / 1.000, against fp32's 0.977 / 0.958 / 0.997
# and 0.988 / 0.923 / 0.995 (docs/results/textures_dev.md, "the local model in bf16").
CPU_TEXTURE_TRAIN = {
    "model": "local+defect",
    "image_size": 256,
    "width": 16,
    "blocks": [1, 1, 1, 1],
    "patches_per_image": 64,
    "rho": 1.0,
    "lr": 1e-3,
    "lr_schedule": "cosine",
    "epochs": 72,
    "amp": True,
    "channels_last": True,
}
# pretrain --preset cpu: the same model(s) and encoder architecture as train --preset cpu
# (so the file fits it). Epochs, measured on textures_dev (54 training images: 2 steps of 32 per
# epoch and kind; docs/results/textures_dev.md): 30 epochs did not move the global
# NT-Xent loss off chance, 200 (about 130 s for both kinds on the shared 2 cores) lowered
# it on moon and for the local encoders. Epochs scale with the data: 335 images take
# ~5.5x as long per epoch.
CPU_PRETRAIN = {k: CPU_TRAIN[k] for k in ("image_size", "width", "blocks")} | {
    "model": "global",
    "epochs": 200,
    "patches_per_image": 8,
}

# --preset paper: every flag at its own default, the paper's GPU-sized models (global + local,
# ResNet-18 width 64, 256², 256 epochs) and its scoring; what `train` meant before --preset auto
# became the default.
PAPER = "paper"
PRESETS: dict[str, dict[str, dict]] = {
    "train": {"cpu": CPU_TRAIN, "cpu-texture": CPU_TEXTURE_TRAIN, PAPER: {}},
    "pretrain": {"cpu": CPU_PRETRAIN},
}

# The scoring recipe each train preset names (igd_fast.score.recipe): `train --preset NAME`
# writes it into the model directory's recipe.json, and score / eval / export use it unless
# a flag overrides it; `score|eval|export --preset NAME` names it for a model trained without.
# cpu: the image score is the sum of the global and defect terms, each standardised on the
# validation normals (the global term carries logical anomalies, the defect term structure:
# mvtec_bottle seed 0, global alone 0.960, defect alone 0.963, the sum 0.980); the map is the
# defect model's alone (the global map's pixel AUROC there was 0.725).
CPU_RECIPE = {"score_norm": "standard", "map_components": "defect"}
# The local model of cpu-texture alone: the residual-Mahalanobis map of the residual smoothed at
# 2 px, and the image scored by its excess over the normals' 0.95 quantile (sections 10 and 13;
# recon_colour auto damps the reconstruction's colour on grey photos): image / pixel AUROC grass
# 0.977 / 0.958 / 0.997, moon 0.988 / 0.923 / 0.995, pixel 0.976-0.998 at seeds 0 / 1 / 2, where
# the paper's scoring of the same models gave image 0.55-0.66.
CPU_TEXTURE_LOCAL_RECIPE = {"map_term": "maha", "residual_sigma": 2.0, "image_score": "map-excess"}
# cpu-texture (local + defect): the local model scored as alone (its map's excess over its own
# level), the defect model by its term, the image score the larger of the two standardised on
# the validation normals (a colour stain counts whole in one, a grey scratch in the other; their
# sum halves either); the map the sum of the two maps standardised.
CPU_TEXTURE_RECIPE = CPU_TEXTURE_LOCAL_RECIPE | {"image_score": "component-excess", "score_norm": "max",
                                                 "map_norm": "standard"}  # fmt: skip
RECIPES: dict[str, dict] = {"cpu": CPU_RECIPE, "cpu-texture": CPU_TEXTURE_RECIPE, PAPER: {}}
# cpu trained without its defect model (--preset cpu --model global): the global model's own
# recipe, the residual-Mahalanobis map smoothed at 4 px (juice_bottle, seeds 0 / 1 / 2: pixel
# AUROC 0.877 / 0.884 / 0.880, image AUROC 0.875 / 0.898 / 0.890; docs/results/juice_bottle.md)
CPU_GLOBAL_RECIPE = {"map_term": "maha", "map_sigma": 4.0}
# a preset's recipe when --model leaves out the component it is built around: (that component,
# the recipe for what is trained without it)
WITHOUT_COMPONENT = {"cpu": ("defect", CPU_GLOBAL_RECIPE), "cpu-texture": ("defect", CPU_TEXTURE_LOCAL_RECIPE)}


def train_recipe(preset: str | None, kinds: tuple[str, ...]) -> dict | None:
    """The recipe ``train --preset PRESET`` writes for the models it trains: the preset's, or,
    when they leave out the component that recipe is built around, the recipe for what is there."""
    recipe = RECIPES.get(preset) if preset else None
    if recipe is None or preset not in WITHOUT_COMPONENT or WITHOUT_COMPONENT[preset][0] in kinds:
        return recipe
    return WITHOUT_COMPONENT[preset][1]


# train --preset auto: cpu for an object photographed in place, cpu-texture for a surface, by the
# training normals' layout strength (igd_fast.data.alignment): measured 4.7 (MVTec LOCO
# juice_bottle) and 241 (MVTec AD bottle) against 0.0014 and 0.054 (textures_dev grass, moon); the
# cut sits near the geometric middle of 0.054 and 4.7, about 9x from each.
AUTO = "auto"
AUTO_LAYOUT_CUT = 0.5


def auto_preset(strength: float) -> str:
    """The train preset ``--preset auto`` stands for at this layout strength."""
    return "cpu" if strength >= AUTO_LAYOUT_CUT else "cpu-texture"


class Default:
    """An argparse default that a preset may replace; ``value`` is the flag's own default."""

    def __init__(self, value) -> None:
        self.value = value

    def __repr__(self) -> str:
        return repr(self.value)


def add_preset(p: argparse._ActionsContainer, verb: str) -> None:
    names = sorted(PRESETS[verb])
    shown = "; ".join(f"{n}: {_preset_text(PRESETS[verb][n])}" for n in names)
    if verb != "train":
        p.add_argument("--preset", choices=names, default=None,
                       help=f"named flag values, explicit flags override them ({shown}); recorded in the output")
        return
    p.add_argument("--preset", choices=[AUTO, *names], default=AUTO,
                   help=f"named flag values, explicit flags override them (default {AUTO}: cpu when the training "
                        f"images show an object in place, cpu-texture when they show a surface (their mean image's "
                        f"layout against their spread; the choice is printed and recorded); {shown}); recorded in "
                        f"the output and writes the scoring recipe it names into OUT/recipe.json")  # fmt: skip


def _preset_text(values: dict) -> str:
    return _flags_text(values) or "every flag at its own default (the paper's GPU-sized models and scoring)"


def recipe_text(name: str) -> str:
    """The scoring flags a preset's recipe stands for."""
    return _flags_text(RECIPES[name])


def _flags_text(values: dict) -> str:
    return " ".join(_flag_text(k, v) for k, v in values.items())


def _flag_text(key: str, value) -> str:
    flag = key.replace("_", "-")
    if isinstance(value, bool):  # an on/off flag (--amp / --no-amp) takes no value
        return f"--{flag}" if value else f"--no-{flag}"
    v = " ".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
    return f"--{flag} {v}"


def apply_preset(args: argparse.Namespace, verb: str) -> dict:
    """Resolve every :class:`Default` in ``args``: the preset's value when ``--preset``
    names one that sets the flag, else the flag's own default. Returns the flags the
    preset set (its values that no explicit flag overrode)."""
    name = getattr(args, "preset", None)
    if name == AUTO:  # a bug in the caller: auto names no values until the training images pick a preset
        raise AssertionError("--preset auto must be resolved before its values are applied")
    preset = PRESETS[verb][name] if name else {}
    applied = {}
    for key, value in vars(args).items():
        if not isinstance(value, Default):
            continue
        if key in preset:
            applied[key] = preset[key]
            setattr(args, key, preset[key])
        else:
            setattr(args, key, value.value)
    missing = set(preset) - set(vars(args))
    if missing:  # a preset key that is no flag of this verb: a bug in PRESETS
        raise AssertionError(f"preset {args.preset} names unknown {verb} flags {sorted(missing)}")
    return applied
