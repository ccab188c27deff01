"""``train --preset auto``: the layout measure (igd_fast.data.alignment) against numpy on
images made for it, and the CLI choosing, printing and recording the preset."""

import json

import numpy as np
import pytest
from PIL import Image

from igd_fast.cli import main
from igd_fast.cli.presets import AUTO_LAYOUT_CUT, auto_preset
from igd_fast.data import make_synthetic_mvtec
from igd_fast.data.alignment import MAX_IMAGES, layout_strength


def _object(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A dark disc at the centre on a noisy light background: the same part in place."""
    yy, xx = np.mgrid[:size, :size]
    img = 200 + rng.normal(0, 20, (size, size))
    img[(yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 4) ** 2] = 60
    return np.repeat(img.clip(0, 255).astype(np.uint8)[..., None], 3, axis=2)


def _texture(rng: np.random.Generator, big: np.ndarray, size: int = 64) -> np.ndarray:
    """A random crop of one large texture photo (here noise blurred into blobs)."""
    y, x = rng.integers(0, big.shape[0] - size, 2)
    return big[y : y + size, x : x + size]


def _write(folder, images) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i, a in enumerate(images):
        files.append(folder / f"{i:03d}.png")
        Image.fromarray(a).save(files[-1])
    return files


def _reference(files) -> float:
    """The measure as its docstring states it, in numpy."""
    x = np.stack([np.asarray(Image.open(f).convert("L").resize((32, 32), Image.BILINEAR), np.float64) / 255
                  for f in files])  # fmt: skip
    within = x.var(axis=0, ddof=1).mean()
    return max(x.mean(axis=0).var() - within / len(x), 0.0) / within


def test_objects_and_textures_fall_either_side_of_the_cut(tmp_path):
    rng = np.random.default_rng(0)
    from scipy.ndimage import gaussian_filter

    big = (gaussian_filter(rng.normal(0, 1, (400, 400)), 3) * 400 + 128).clip(0, 255).astype(np.uint8)
    big = np.repeat(big[..., None], 3, axis=2)
    objects = _write(tmp_path / "o", [_object(rng) for _ in range(20)])
    textures = _write(tmp_path / "t", [_texture(rng, big) for _ in range(20)])
    o, t = layout_strength(objects), layout_strength(textures)
    assert o.strength == pytest.approx(_reference(objects), rel=1e-9) and o.n_images == 20
    assert t.strength == pytest.approx(_reference(textures), rel=1e-9, abs=1e-12)
    assert o.strength > 10 * AUTO_LAYOUT_CUT and t.strength < AUTO_LAYOUT_CUT / 10
    assert (auto_preset(o.strength), auto_preset(t.strength)) == ("cpu", "cpu-texture")
    # identical images: all layout; unreadable files are left out, too few readable refused
    same = _write(tmp_path / "s", [_object(np.random.default_rng(1))] * 3)
    assert layout_strength(same).strength == float("inf")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert layout_strength([*objects[:3], tmp_path / "bad.png"]).n_images == 3
    with pytest.raises(ValueError, match="at least 2 readable"):
        layout_strength([objects[0], tmp_path / "bad.png"])


def test_many_images_are_subsampled_evenly(tmp_path):
    rng = np.random.default_rng(2)
    files = _write(tmp_path / "o", [_object(rng, 16) for _ in range(MAX_IMAGES + 7)])
    assert layout_strength(files).n_images == MAX_IMAGES


TINY = ["--epochs", "0", "--image-size", "96", "--width", "8", "--blocks", "1", "1", "1", "1", "--latent", "16",
        "--defect-size", "32", "--defect-steps", "2", "--batch-size", "4", "--workers", "0", "--no-progress",
        "--device", "cpu"]  # fmt: skip


def test_cli_picks_records_and_says_the_preset(tmp_path, capsys):
    tex = tmp_path / "tex"
    make_synthetic_mvtec(tex, "cat", n_train=8, n_test_good=1, n_test_bad=1, size=64, seed=0)
    obj = tmp_path / "obj"
    _write(obj / "cat" / "train" / "good", [_object(np.random.default_rng(3)) for _ in range(8)])
    # named, and as the default (no --preset at all)
    for data, want, models, named in ((tex, "cpu-texture", ["local", "defect"], ["--preset", "auto"]),
                                      (obj, "cpu", ["global", "defect"], [])):  # fmt: skip
        out = tmp_path / f"m_{want}"
        assert main(["train", "--data", str(data), "--category", "cat", "--out", str(out), *named, *TINY]) == 0
        said = capsys.readouterr().out
        assert "--preset auto: layout strength" in said and f"--preset {want}" in said
        run = json.loads((out / "run.json").read_text())
        assert set(run["models"]) == set(models)
        opts = run["models"][models[0]]["options"]
        assert opts["preset"] == want and opts["preset_choice"]["chose"] == want
        assert opts["preset_choice"]["preset"] == "auto" and opts["preset_choice"]["n_images"] == 8
        assert json.loads((out / "recipe.json").read_text())["preset"] == want


def test_cli_auto_without_readable_images_exits_2(tmp_path, capsys):
    good = tmp_path / "d" / "cat" / "train" / "good"
    good.mkdir(parents=True)
    (good / "a.png").write_bytes(b"not an image")
    Image.fromarray(_object(np.random.default_rng(0))).save(good / "b.png")
    code = main(["train", "--data", str(tmp_path / "d"), "--category", "cat", "--out", str(tmp_path / "m"),
                 "--preset", "auto", *TINY])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "--preset auto" in err and "at least 2 readable" in err and "Traceback" not in err


@pytest.mark.parametrize("native", [True, False])
def test_cpu_texture_trains_its_local_model_in_bf16_only_where_the_cpu_has_it(tmp_path, capsys, monkeypatch, native):
    # the preset sets --amp --channels-last; on a CPU without bf16 instructions its bf16 is dropped
    # (autocast would convert in software) and the run says so, while channels_last stays
    import igd_fast.score.precision as precision

    monkeypatch.setattr(precision, "bf16_support", lambda device: None if native else "no bf16 here")
    tex = tmp_path / "tex"
    make_synthetic_mvtec(tex, "cat", n_train=8, n_test_good=1, n_test_bad=1, size=64, seed=0)
    out = tmp_path / "m"
    assert main(["train", "--data", str(tex), "--category", "cat", "--out", str(out), "--preset", "cpu-texture",
                 *TINY]) == 0  # fmt: skip
    said = capsys.readouterr().out
    run = json.loads((out / "run.json").read_text())
    local, defect = run["models"]["local"], run["models"]["defect"]
    assert local["options"]["channels_last"] is True and local["options"]["preset_applied"]["channels_last"] is True
    assert local["options"]["amp"] is (True if native else None)
    assert ("amp" in local["options"]["preset_applied"]) is native
    assert defect["bf16"] is native
    assert ("the local model trains in fp32 (no bf16 here)" in said) is not native
    # an explicit flag wins over the preset
    out2 = tmp_path / "m2"
    assert main(["train", "--data", str(tex), "--category", "cat", "--out", str(out2), "--preset", "cpu-texture",
                 "--no-amp", *TINY]) == 0  # fmt: skip
    run2 = json.loads((out2 / "run.json").read_text())
    assert run2["models"]["local"]["options"]["amp"] is False and run2["models"]["defect"]["bf16"] is False
