"""igd_fast.data: MVTec layout reader, normalisation, split, synthetic generator, errors."""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from igd_fast import DATA_RANGE
from igd_fast.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CorruptImageError,
    DataLayoutError,
    MVTecDataset,
    list_test_samples,
    list_train_files,
    load_image,
    make_synthetic_mvtec,
    split_train_val,
)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("mvtec")
    make_synthetic_mvtec(r, "synth", n_train=10, n_test_good=2, n_test_bad=4, size=48, seed=1)
    return r


def _digest(folder):
    return {
        p.relative_to(folder).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.png"))
    }


def test_synthetic_layout_and_determinism(root, tmp_path):
    cat = root / "synth"
    assert len(list((cat / "train" / "good").glob("*.png"))) == 10
    assert sorted(p.name for p in (cat / "test").iterdir()) == ["blob", "good", "scratch"]
    for defect in ("blob", "scratch"):
        for img in (cat / "test" / defect).glob("*.png"):
            mask = np.asarray(Image.open(cat / "ground_truth" / defect / f"{img.stem}_mask.png"))
            assert set(np.unique(mask)) == {0, 255}
    again = make_synthetic_mvtec(tmp_path, "synth", n_train=10, n_test_good=2, n_test_bad=4, size=48, seed=1)
    assert _digest(again) == _digest(cat)
    other = make_synthetic_mvtec(tmp_path, "other", n_train=10, n_test_good=2, n_test_bad=4, size=48, seed=2)
    assert _digest(other) != _digest(cat)


def test_split_is_deterministic_disjoint_and_seeded(root):
    files = list_train_files(root, "synth")
    tr, va = split_train_val(files, 0.2, seed=3)
    assert len(va) == 2 and len(tr) == 8
    assert set(tr).isdisjoint(va) and set(tr) | set(va) == set(files)
    assert split_train_val(list(reversed(files)), 0.2, seed=3) == (tr, va)
    assert any(split_train_val(files, 0.2, seed=s)[1] != va for s in range(4, 10))
    assert split_train_val(files, 0.0)[1] == []
    ds_tr = MVTecDataset(root, "synth", "train", 32, val_fraction=0.2, seed=3)
    ds_va = MVTecDataset(root, "synth", "val", 32, val_fraction=0.2, seed=3)
    assert ds_tr.files == tr and ds_va.files == va


def test_normalisation_modes_and_resize(tmp_path):
    white = tmp_path / "white.png"
    Image.new("RGB", (20, 10), (255, 255, 255)).save(white)
    x = load_image(white, 16)
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    expect = torch.tensor([(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])
    torch.testing.assert_close(x[:, 0, 0], expect)
    black = tmp_path / "black.jpg"
    Image.new("RGB", (8, 8)).save(black)
    lo = load_image(black, None)
    hi = load_image(white, None)
    assert lo.shape == (3, 8, 8) and hi.shape == (3, 10, 20)
    assert abs(float(hi.max() - lo.min()) - DATA_RANGE) < 1e-3
    gray = tmp_path / "gray.png"
    Image.new("L", (8, 8), 128).save(gray)
    rgba = tmp_path / "rgba.png"
    Image.new("RGBA", (8, 8), (128, 128, 128, 7)).save(rgba)
    for p in (gray, rgba):
        g = load_image(p, 8)
        assert g.shape == (3, 8, 8)
        torch.testing.assert_close(g, load_image(gray, 8))


def test_test_split_labels_and_masks(root):
    ds = MVTecDataset(root, "synth", "test", 32)
    assert len(ds) == 6
    items = [ds[i] for i in range(len(ds))]
    for it in items:
        assert it["image"].shape == (3, 32, 32) and it["mask"].shape == (1, 32, 32)
        assert it["label"] == (0 if it["defect"] == "good" else 1)
        if it["label"]:
            assert it["mask"].sum() > 0 and set(it["mask"].unique().tolist()) <= {0.0, 1.0}
        else:
            assert it["mask"].sum() == 0
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3, num_workers=0)))
    assert batch["image"].shape == (3, 3, 32, 32) and len(batch["path"]) == 3


def test_layout_errors_say_what_was_expected(tmp_path):
    with pytest.raises(DataLayoutError, match=r"category folder .*nope.* does not exist.*train/good"):
        list_train_files(tmp_path, "nope")
    (tmp_path / "cat" / "train" / "good").mkdir(parents=True)
    with pytest.raises(DataLayoutError, match=r"holds no image files.*<root>/<category>/train/good"):
        MVTecDataset(tmp_path, "cat", "train")
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(DataLayoutError, match=r"flat/train/good does not exist; expected the MVTec AD"):
        MVTecDataset(tmp_path, "flat", "train")
    bad = tmp_path / "nomask"
    (bad / "test" / "crack").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(bad / "test" / "crack" / "000.png")
    with pytest.raises(DataLayoutError, match=r"no mask .*ground_truth/crack/000_mask.png"):
        list_test_samples(tmp_path, "nomask")


def test_corrupt_image_named_or_skipped(root, tmp_path):
    import shutil

    shutil.copytree(root / "synth", tmp_path / "c")
    broken = tmp_path / "c" / "train" / "good" / "zz_broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    ds = MVTecDataset(tmp_path, "c", "train_all", 32)
    with pytest.raises(CorruptImageError, match="zz_broken.png"):
        ds[len(ds) - 1]
    with pytest.warns(UserWarning, match="skipping cannot read image file .*zz_broken.png"):
        ok = MVTecDataset(tmp_path, "c", "train_all", 32, skip_corrupt=True)
    assert len(ok) == len(ds) - 1 and broken not in ok.files
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ok[0]["image"].shape == (3, 32, 32)


# ---------------------------------------------------------------- layouts: MVTec LOCO, Folder


def test_loco_layout_masks_are_or_of_region_files(tmp_path):
    from _layouts import to_loco

    from igd_fast.data import list_validation_files, load_mask, mask_size_mismatches, resolve_layout

    cat = make_synthetic_mvtec(tmp_path / "ad", "synth", n_train=8, n_test_good=2, n_test_bad=4, size=32, seed=3)
    loco = to_loco(cat, tmp_path / "loco")
    lay = resolve_layout(tmp_path / "loco", "synth")
    assert lay.kind == "mvtec_loco" and resolve_layout(tmp_path / "ad", "synth").kind == "mvtec"
    assert lay.validation_files() == list_validation_files(tmp_path / "loco", "synth")
    assert len(lay.validation_files()) == 3 and len(lay.train_files()) == 5
    ad, lo = list_test_samples(tmp_path / "ad", "synth"), lay.test_samples()
    assert [(s.path.name, s.defect, s.rel) for s in ad] == [(s.path.name, s.defect, s.rel) for s in lo]
    assert not mask_size_mismatches(lo)
    for a, b in zip(ad, lo, strict=True):
        if a.mask is None:
            assert b.mask is None
            continue
        assert b.mask.is_dir() and sorted(p.name for p in b.mask.iterdir()) == ["000.png", "001.png"]
        assert torch.equal(load_mask(a.mask, 32), load_mask(b.mask, 32)) and load_mask(b.mask, 32).sum() > 0
    # a region file of another size is refused before scoring; an empty mask folder is named
    big = next(s.mask for s in lo if s.mask is not None)
    Image.new("L", (40, 40)).save(big / "002.png")
    assert any("002.png" in m for m in mask_size_mismatches(lo))
    (loco / "ground_truth" / "blob" / "empty").mkdir()
    with pytest.raises(CorruptImageError, match="holds no mask files"):
        load_mask(loco / "ground_truth" / "blob" / "empty", 32)


def test_folder_layout(tmp_path):
    from _layouts import to_folder

    from igd_fast.data import resolve_layout

    cat = make_synthetic_mvtec(tmp_path / "ad", "synth", n_train=10, n_test_good=2, n_test_bad=2, size=32, seed=4)
    d = to_folder(cat, tmp_path / "f")
    lay = resolve_layout(normal_dir=d["normal"], abnormal_dir=d["abnormal"], mask_dir=d["mask"],
                         normal_test_dir=d["normal_test"])  # fmt: skip
    assert lay.kind == "folder" and lay.name == "folder" and len(lay.train_files()) == 10
    t = lay.test_samples()
    assert [s.label for s in t] == [0, 0, 1, 1] and all(s.mask.name == s.path.name for s in t if s.label)
    # no normal test folder: a deterministic 20 % of the normals, left out of training
    lay2 = resolve_layout(normal_dir=d["normal"], abnormal_dir=d["abnormal"])
    normal_test = [s.path for s in lay2.test_samples() if s.label == 0]
    assert len(normal_test) == 2 and not set(normal_test) & set(lay2.train_files()) and not lay2.has_masks
    assert all(s.mask is None for s in lay2.test_samples())
    # masks named <stem>_mask.png are found too; a missing one is named
    for m in d["mask"].iterdir():
        m.rename(m.with_name(m.stem + "_mask.png"))
    assert all(s.mask.name.endswith("_mask.png") for s in lay.test_samples() if s.label)
    next(d["mask"].iterdir()).unlink()
    with pytest.raises(DataLayoutError, match="has no mask for"):
        lay.test_samples()


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(), "name the data"),
        (dict(data="x"), "name the data"),
        (dict(data="x", category="c", normal_dir="n"), "not both"),
        (dict(data="x", category="c", mask_dir="m"), "need\\(s\\) --normal-dir"),
        (dict(normal_dir="n", mask_dir="m"), "--mask-dir needs --abnormal-dir"),
    ],
)
def test_layout_option_errors(tmp_path, kw, match):
    from igd_fast.data import resolve_layout

    with pytest.raises(DataLayoutError, match=match):
        resolve_layout(**kw)
