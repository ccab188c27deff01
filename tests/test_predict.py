"""``Scorer.predict``: in-memory images (PIL, numpy, tensors; one or a batch) score exactly as
the same image read from a file by ``score_paths``, with the post-processor's decision."""

import numpy as np
import pytest
import torch
from PIL import Image

from igd_fast.score import Prediction, Scorer


@pytest.fixture(scope="module")
def scorer(tiny_pair, tmp_path_factory):
    t = tiny_pair
    root = tmp_path_factory.mktemp("igd_predict")
    # two files of other sizes than the model's 64²: the maps come back at these sizes
    rgb = np.asarray(Image.open(t["test"][-1]).convert("RGB").resize((70, 50)))
    Image.fromarray(rgb).save(root / "rgb.png")
    grey = np.asarray(Image.open(t["test"][0]).convert("L").resize((60, 90)), dtype=np.uint16) * 257
    Image.fromarray(grey).save(root / "grey16.png")  # a 16-bit file
    s = Scorer(t["model"], device="cpu", batch_size=2)
    return {"scorer": s, "rgb": root / "rgb.png", "rgb_px": rgb, "grey16": root / "grey16.png", "grey_px": grey}


def _same(p: Prediction, r, post) -> None:
    assert p.score == r.score and (p.s_global, p.s_local) == (r.s_global, r.s_local)
    np.testing.assert_array_equal(p.anomaly_map, r.map)
    assert p.pred_score == post.pred_score([r.score])[0] and p.pred_label == int(r.score > post.threshold)
    np.testing.assert_array_equal(p.pred_mask, r.map > post.pixel_threshold)


def test_numpy_pil_and_tensor_equal_the_file(scorer):
    s, px = scorer["scorer"], scorer["rgb_px"]
    (ref,) = s.score_paths([scorer["rgb"]])
    post = s.post_processor
    t = torch.from_numpy(px.copy())
    inputs = {"uint8 HWC": px, "float HWC": px.astype(np.float32) / 255, "PIL": Image.fromarray(px),
              "uint8 CHW tensor": t.permute(2, 0, 1), "float CHW tensor": t.permute(2, 0, 1).float() / 255,
              "path": scorer["rgb"]}  # fmt: skip
    for name, x in inputs.items():
        p = s.predict(x)
        assert isinstance(p, Prediction), name
        assert p.anomaly_map.shape == (50, 70), name
        _same(p, ref, post)
    assert s.predict(px).path is None and s.predict(scorer["rgb"]).path == str(scorer["rgb"])


def test_sixteen_bit_and_grey_arrays_equal_the_file(scorer):
    s = scorer["scorer"]
    (ref,) = s.score_paths([scorer["grey16"]])
    for x in (scorer["grey_px"], scorer["grey_px"][..., None], np.repeat(scorer["grey_px"][..., None], 3, 2)):
        _same(s.predict(x), ref, s.post_processor)


def test_batches_equal_the_files_in_the_same_batches(scorer, tmp_path):
    s, px = scorer["scorer"], scorer["rgb_px"]
    flipped = np.ascontiguousarray(px[:, ::-1])
    Image.fromarray(flipped).save(tmp_path / "flipped.png")
    files = [scorer["rgb"], tmp_path / "flipped.png", scorer["rgb"]]
    refs = list(s.score_paths(files))  # batch_size 2: [rgb, flipped], [rgb]
    nhwc = np.stack([px, flipped, px])
    for batch in (nhwc, torch.from_numpy(nhwc).permute(0, 3, 1, 2), list(nhwc), [Image.fromarray(a) for a in nhwc],
                  files):  # fmt: skip
        out = s.predict(batch)
        assert isinstance(out, list) and len(out) == 3
        for p, r in zip(out, refs, strict=True):
            _same(p, r, s.post_processor)
    mixed = s.predict([px, scorer["grey_px"]])
    assert [m.anomaly_map.shape for m in mixed] == [(50, 70), (90, 60)]


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 3), np.int32), np.full((4, 4, 3), 2.0), np.zeros((4, 4, 5), np.uint8),
                                 "not an image", []])  # fmt: skip
def test_what_cannot_be_an_image_is_refused(scorer, bad):
    with pytest.raises((ValueError, TypeError, FileNotFoundError)):
        scorer["scorer"].predict(bad)
