"""The defect model as a scoring component: its checkpoint, its normaliser rule, images read
at their own aspect (batches split by size, results in input order), its map in place on
the original image, and the CLI from train to eval on tiny data."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from igd_fast.checkpoint import CheckpointError, load_defect_model, save_defect_checkpoint
from igd_fast.cli import main
from igd_fast.data import working_size
from igd_fast.models.defect import NORMALISER_KEYS, DefectConfig, DefectModel, pixel_maps, residual_weight
from igd_fast.score.components import DEFECT_TOP_FRACTION, DefectPart
from igd_fast.score.inputs import to_items
from igd_fast.score.module import BatchScores, ScoringModule
from igd_fast.score.recipe import Recipe
from igd_fast.score.runner import Runner

TINY = dict(image_size=32, width=4, depth=2, recon_width=4, recon_depth=2, steps=2, batch_size=2)
NORM = {"logit_mean": 0.0, "logit_std": 1.0, "resid_mean": 0.0, "resid_std": 1.0, "resid_weight": 0.0,
        "resid_auroc": 0.5}  # fmt: skip


def test_residual_weight_rule():
    assert residual_weight(0.55) == 0.0 and residual_weight(0.6) == 0.0
    assert residual_weight(0.7) == pytest.approx(0.5) and residual_weight(0.93) == 1.0


def test_working_size_keeps_the_aspect():
    assert working_size(400, 200, 256) == (256, 128)
    assert working_size(450, 450, 256) == (256, 256)
    assert working_size(3, 3000, 256) == (1, 256)


def test_defect_checkpoint_round_trip_and_refusals(tmp_path):
    torch.manual_seed(0)
    model = DefectModel(DefectConfig(**TINY)).eval()
    norm = dict(NORM, resid_weight=0.25)
    f = tmp_path / "defect.pt"
    save_defect_checkpoint(f, model, norm, [], {"seed": 0})
    back, got = load_defect_model(f)
    x = torch.randn(2, 3, 20, 28)
    torch.testing.assert_close(back(x)[0], model(x)[0])
    assert got == norm and set(got) == set(NORMALISER_KEYS)
    ck = torch.load(f, weights_only=True)
    ck["config"]["width"] = 4096  # a config the weights do not fit: refused before building it
    torch.save(ck, tmp_path / "wide.pt")
    with pytest.raises(CheckpointError, match="usable defect model"):
        load_defect_model(tmp_path / "wide.pt")
    ck = torch.load(f, weights_only=True)
    ck["normaliser"]["logit_std"] = float("nan")
    torch.save(ck, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match="normaliser"):
        load_defect_model(tmp_path / "nan.pt")


class _Bright(nn.Module):
    """A stand-in defect model: the logit is the image's first channel, the repair the
    image itself (no residual); the map is then where the image is bright."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.config = DefectConfig(**dict(TINY, image_size=size))

    def forward(self, x):
        return x[:, :1] * 1.0, x


def _module(part) -> ScoringModule:
    return ScoringModule({"defect": part}, Recipe.resolve())


def test_a_spot_stays_where_it_was_on_a_non_square_image():
    h, w = 90, 240  # read at 96 x 256: the aspect kept, not squashed to 256²
    img = np.zeros((h, w, 3), np.uint8)
    img[60:66, 200:206] = 255
    module = _module(DefectPart(_Bright(256), NORM))
    seen = []
    real = module.raw

    def spy(x, want_maps=True):
        seen.append(tuple(x.shape[-2:]))
        return real(x, want_maps)

    module.raw = spy
    items, _ = to_items(img, module.image_size, module.keep_aspect)
    (r,) = list(Runner(module, torch.device("cpu")).score_batches(Runner(module, torch.device("cpu")).batches(items)))
    assert seen == [working_size(h, w, 256)] == [(96, 256)]
    assert r.map.shape == (h, w)
    y, x = np.unravel_index(np.argmax(r.map), r.map.shape)
    assert abs(y - 62.5) <= 3 and abs(x - 202.5) <= 3
    assert np.isfinite(r.score)


def test_the_term_is_the_mean_of_the_top_fraction_of_the_fine_map():
    part = DefectPart(_Bright(64), NORM)
    x = torch.zeros(1, 3, 64, 64)
    x[0, 0, 10, 10] = 1.0
    t = part(x)
    k = max(1, math.ceil(DEFECT_TOP_FRACTION * 64 * 64))
    from igd_fast.score.maps import gaussian_smooth

    fine = gaussian_smooth(x[:, :1], 1.0 * 64 / 224).flatten(1)
    torch.testing.assert_close(t.score, fine.topk(k, 1).values.mean(1))
    assert t.map.shape == (1, 1, 64, 64)


def test_pixel_maps_average_the_flips_back_into_place():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 16, 24)
    logit, resid = pixel_maps(_Bright(32), x)
    torch.testing.assert_close(logit, x[:, :1])  # each flip undone: the identity model's logit comes back
    assert float(resid.abs().max()) == 0.0


class _LeftHanded(nn.Module):
    """A defect model that is not flip-equivariant: its logit is the image's first channel
    on the left half of whatever it is shown, 0 on the right."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.config = DefectConfig(**dict(TINY, image_size=size))

    def forward(self, x):
        lo = x[:, :1].clone()
        lo[..., x.shape[-1] // 2 :] = 0
        return lo, x


def test_the_map_is_the_image_as_it_is_and_the_term_averages_the_flips():
    from igd_fast.score.maps import gaussian_smooth

    x = torch.zeros(1, 3, 64, 64)
    x[0, 0, 20, 50] = 8.0  # on the right: the identity pass does not see it, the left-right flip does
    t = DefectPart(_LeftHanded(64), NORM, tiler=None)(x)
    assert float(t.map.abs().max()) == 0.0
    z = DefectPart(_LeftHanded(64), NORM, tiler=None).standardised(x)
    assert z.shape == (1, 2, 64, 64) and float(z[0, 1, 20, 50]) == pytest.approx(8.0 * 2 / 4)  # 2 of 4 flips see it
    fine = gaussian_smooth(z[:, 1:], 1.0 * 64 / 224).flatten(1)
    k = max(1, math.ceil(DEFECT_TOP_FRACTION * 64 * 64))
    torch.testing.assert_close(t.score, fine.topk(k, 1).values.mean(1))
    assert float(t.score) > 0


class _MeanModel:
    """A runner model whose score is each image's mean, to check order and sizes."""

    image_size, keep_aspect, map_scored = 32, True, False

    def __init__(self):
        self.shapes = []

    def raw(self, x, want_maps=True):
        self.shapes.append(tuple(x.shape))
        return BatchScores(x.mean((1, 2, 3)).double(), {}, None)


def test_images_of_several_sizes_share_a_batch_in_input_order(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate([(40, 80), (80, 40), (40, 80), (50, 50)]):
        p = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    paths.insert(2, tmp_path / "bad.png")
    model = _MeanModel()
    together = list(Runner(model, torch.device("cpu"), batch_size=8).score_paths(paths))
    assert [r.path for r in together] == [str(p) for p in paths]
    assert sorted(model.shapes) == sorted([(2, 3, 16, 32), (1, 3, 32, 16), (1, 3, 32, 32)])
    alone = [next(iter(Runner(_MeanModel(), torch.device("cpu")).score_paths([p]))) for p in paths]
    assert [getattr(r, "score", None) for r in together] == [getattr(r, "score", None) for r in alone]


def test_cli_trains_and_scores_the_global_plus_defect_recipe(tmp_path, capsys):
    from igd_fast.data import make_synthetic_mvtec

    data, model = tmp_path / "data", tmp_path / "m"
    make_synthetic_mvtec(data, "cat", n_train=8, n_test_good=2, n_test_bad=2, size=96, seed=0)
    code = main(["train", "--data", str(data), "--category", "cat", "--out", str(model), "--preset", "cpu",
                 "--image-size", "96", "--width", "8", "--epochs", "1", "--defect-size", "32", "--defect-steps", "2",
                 "--defect-crop", "24", "--val-fraction", "0.25", "--no-progress", "--device", "cpu"])  # fmt: skip
    assert code == 0
    assert (model / "global.pt").is_file() and (model / "defect.pt").is_file()
    run = json.loads((model / "run.json").read_text())
    assert set(run["models"]) == {"global", "defect"}
    assert set(run["models"]["defect"]["normaliser"]) == set(NORMALISER_KEYS)
    assert run["models"]["defect"]["config"]["crop"] == 24  # trained on 24² crops, scored whole
    capsys.readouterr()
    assert main(["eval", "--model", str(model), "--data", str(data), "--category", "cat", "--no-progress"]) == 0
    rep = json.loads((model / "eval_cat" / "report.json").read_text())
    assert rep["recipe"]["values"]["map_components"] == "defect" and rep["models"] == ["global", "defect"]
    assert np.isfinite(rep["image_AUROC"]) and np.isfinite(rep["pixel_AUROC"])
    odd = tmp_path / "odd"
    odd.mkdir()
    Image.fromarray(np.full((30, 70, 3), 128, np.uint8)).save(odd / "wide.png")
    assert main(["score", "--model", str(model), "--input", str(odd), "--out", str(tmp_path / "o"),
                 "--save-maps", "--no-progress"]) == 0  # fmt: skip
    assert np.load(tmp_path / "o" / "maps" / "wide.png.npy").shape == (30, 70)


def test_map_components_must_name_a_component_of_the_model():
    with pytest.raises(ValueError, match="no such component"):
        ScoringModule({"defect": DefectPart(_Bright(32), NORM)}, Recipe.resolve(flags={"map_components": "global"}))


def test_a_preset_without_its_defect_model_writes_the_recipe_for_what_is_there():
    from igd_fast.cli.presets import CPU_GLOBAL_RECIPE, CPU_TEXTURE_LOCAL_RECIPE, RECIPES, train_recipe

    assert train_recipe("cpu", ("global", "defect")) == RECIPES["cpu"]
    assert train_recipe("cpu", ("global",)) == CPU_GLOBAL_RECIPE
    assert train_recipe("cpu-texture", ("local", "defect")) == RECIPES["cpu-texture"]
    assert train_recipe("cpu-texture", ("local",)) == CPU_TEXTURE_LOCAL_RECIPE
    assert train_recipe(None, ("global",)) is None
