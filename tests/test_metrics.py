"""igd_fast.metrics against scikit-learn / scipy on random data and a hand-computed AUPRO."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from sklearn.metrics import f1_score as sk_f1_score
from sklearn.metrics import precision_recall_curve, roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from igd_fast.metrics import (
    accuracy,
    aupro,
    auroc,
    f1_max,
    f1_score,
    label_components,
    per_image_pixel_auroc,
    pixel_auroc,
    pixel_f1_max,
    pro_curve,
    roc_curve,
)


@st.composite
def scored_labels(draw, max_n=200):
    n = draw(st.integers(2, max_n))
    levels = draw(st.integers(1, 8))  # few levels -> many ties
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    if draw(st.booleans()):
        scores = rng.integers(0, levels, n).astype(np.float64)
    else:
        scores = rng.normal(size=n)
    labels = rng.integers(0, 2, n)
    labels[0], labels[1] = 0, 1  # both classes present
    return scores, labels


@settings(max_examples=60, deadline=None)
@given(scored_labels())
def test_auroc_matches_sklearn(data):
    scores, labels = data
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert auroc(torch.from_numpy(scores).float(), torch.from_numpy(labels)) == pytest.approx(
        roc_auc_score(labels, scores.astype(np.float32)), abs=1e-9
    )


@settings(max_examples=40, deadline=None)
@given(scored_labels())
def test_roc_curve_matches_sklearn(data):
    scores, labels = data
    fpr, tpr, thr = roc_curve(scores, labels)
    sk_fpr, sk_tpr, sk_thr = sk_roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr.numpy(), sk_fpr, atol=1e-12)
    np.testing.assert_allclose(tpr.numpy(), sk_tpr, atol=1e-12)
    np.testing.assert_array_equal(thr.numpy()[1:], sk_thr[1:])
    assert thr[0] == float("inf")


def test_auroc_known_values_and_errors():
    assert auroc([0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1]) == 1.0
    assert auroc([0.4, 0.3, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert auroc([1.0, 1.0, 1.0, 1.0], [0, 1, 0, 1]) == 0.5  # all tied: chance
    with pytest.raises(ValueError, match="both classes"):
        auroc([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="NaN"):
        auroc([0.1, float("nan")], [0, 1])
    with pytest.raises(ValueError, match="labels"):
        auroc([0.1, 0.2, 0.3], [0, 1])


def test_accuracy_at_threshold():
    scores = [0.1, 0.5, 0.5, 0.9]
    labels = [0, 0, 1, 1]
    assert accuracy(scores, labels, 0.5) == 0.75  # 0.5 is not > 0.5: labelled normal
    assert accuracy(scores, labels, 0.05) == 0.5
    assert accuracy(scores, labels, 1.0) == 0.5


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 4), st.integers(4, 24), st.integers(4, 24))
def test_pixel_aurocs_match_sklearn(seed, n, h, w):
    rng = np.random.default_rng(seed)
    masks = rng.random((n, h, w)) > 0.7
    masks[0, 0, 0], masks[0, 0, 1] = True, False
    maps = np.round(rng.random((n, h, w)) + 0.3 * masks, 2).astype(np.float32)  # ties
    assert pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-9)
    want = [roc_auc_score(masks[i].ravel(), maps[i].ravel()) for i in range(n) if 0 < masks[i].sum() < masks[i].size]
    assert per_image_pixel_auroc(torch.from_numpy(maps)[:, None], masks) == pytest.approx(np.mean(want))


def test_per_image_pixel_auroc_skips_normal_images():
    maps = np.zeros((2, 2, 2), np.float32)
    masks = np.zeros((2, 2, 2), bool)
    maps[1] = [[0.9, 0.1], [0.2, 0.3]]
    masks[1, 0, 0] = True
    assert per_image_pixel_auroc(maps, masks) == 1.0
    with pytest.raises(ValueError, match="both anomalous and normal"):
        per_image_pixel_auroc(maps[:1], masks[:1])


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 3), st.integers(1, 40), st.integers(1, 40), st.floats(0.2, 0.8))
def test_label_components_matches_scipy(seed, n, h, w, p):
    rng = np.random.default_rng(seed)
    masks = rng.random((n, h, w)) < p
    labels, count = label_components(torch.from_numpy(masks))
    want_count = 0
    for i in range(n):
        want, k = ndimage.label(masks[i], structure=np.ones((3, 3)))
        want_count += k
        got = labels[i].numpy()
        assert ((got > 0) == masks[i]).all()
        # same partition: a one-to-one map between our labels and scipy's
        pairs = {(a, b) for a, b in zip(got[masks[i]], want[masks[i]], strict=True)}
        assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs}) == k
    assert count == want_count


def test_label_components_spiral_converges():
    # a long snake: plain propagation would need ~h*w/2 rounds
    m = np.zeros((41, 41), bool)
    m[::4, :] = True
    for k in range(10):  # join row 4k to row 4k+4 at alternating ends
        m[4 * k + 1 : 4 * k + 4, -1 if k % 2 == 0 else 0] = True
    labels, count = label_components(torch.from_numpy(m))
    assert count == 1 == ndimage.label(m, structure=np.ones((3, 3)))[1]
    assert (labels[m] == 1).all()


def test_aupro_hand_computed():
    # One image 1×6 pixels: two regions {0,1} and {4}; normals {2,3,5} (3 normal pixels).
    maps = np.array([[[0.9, 0.3, 0.8, 0.1, 0.7, 0.2]]], np.float64)
    masks = np.array([[[1, 1, 0, 0, 1, 0]]], bool)
    # thresholds from the top: 0.9 -> region A 1/2 covered: PRO = (0.5 + 0)/2 = 0.25, FPR 0
    #  0.8 -> normal: FPR 1/3; 0.7 -> region B: PRO 0.75; 0.3 -> A full: PRO 1.0
    #  0.2 -> FPR 2/3; 0.1 -> FPR 1
    fpr, pro = pro_curve(maps, masks)
    np.testing.assert_allclose(fpr.numpy(), [0, 0, 1 / 3, 1 / 3, 1 / 3, 2 / 3, 1, 1])
    np.testing.assert_allclose(pro.numpy(), [0, 0.25, 0.25, 0.75, 1.0, 1.0, 1.0, 1])
    # up to FPR 0.3: (0, 0)->(0, 0.25) area 0, then 0.25 flat to 0.3 interpolated on the
    # segment (0, 0.25)->(1/3, 0.25): area 0.3 * 0.25 = 0.075, / 0.3 = 0.25
    assert aupro(maps, masks) == pytest.approx(0.25)
    # up to FPR 1: 0.25/3 + (1/3)*1 + (1/3)*1 = 0.75
    assert aupro(maps, masks, fpr_limit=1.0) == pytest.approx(0.25 / 3 + 2 / 3)
    # the interpolation at the limit matters when a segment crosses it
    fpr2, pro2 = pro_curve(np.array([[[0.9, 0.8, 0.1]]]), np.array([[[0, 1, 0]]], bool))
    np.testing.assert_allclose(fpr2.numpy(), [0, 0.5, 0.5, 1, 1])
    np.testing.assert_allclose(pro2.numpy(), [0, 0, 1, 1, 1])
    # to FPR 0.3: zero area until 0.5: 0
    assert aupro(np.array([[[0.9, 0.8, 0.1]]]), np.array([[[0, 1, 0]]], bool)) == 0.0
    # to FPR 0.75: rectangle from 0.5 to 0.75 at PRO 1: 0.25 / 0.75
    assert aupro(np.array([[[0.9, 0.8, 0.1]]]), np.array([[[0, 1, 0]]], bool), 0.75) == pytest.approx(1 / 3)


def test_aupro_perfect_and_random():
    rng = np.random.default_rng(0)
    masks = np.zeros((4, 32, 32), bool)
    masks[0, 4:10, 4:12] = True
    masks[1, 20:30, 2:5] = True
    masks[1, 0:3, 25:31] = True
    perfect = masks.astype(np.float32) + 0.01 * rng.random(masks.shape)
    assert aupro(perfect, masks) == pytest.approx(1.0)
    noise = rng.random(masks.shape).astype(np.float32)
    # a random map has PRO ≈ FPR: the area to 0.3 is about 0.15, normalised ≈ 0.15
    assert aupro(noise, masks) == pytest.approx(0.15, abs=0.05)


def test_aupro_matches_reference_loop():
    """Against a direct threshold sweep (per-region overlap averaged, FPR over normals)."""
    rng = np.random.default_rng(1)
    masks = np.zeros((3, 16, 16), bool)
    masks[0, 2:6, 2:6] = True
    masks[0, 10:14, 9:15] = True
    masks[2, 5:12, 3:8] = True
    maps = np.round(rng.random(masks.shape) + 0.5 * masks, 1)  # heavy ties
    fpr, pro = pro_curve(maps, masks)
    regions = []
    for i in range(3):
        lab, k = ndimage.label(masks[i], structure=np.ones((3, 3)))
        regions += [(i, lab == j + 1) for j in range(k)]
    for t in np.unique(maps):
        pred = maps >= t
        want_fpr = pred[~masks].mean()
        want_pro = np.mean([pred[i][r].mean() for i, r in regions])
        hit = np.isclose(fpr.numpy(), want_fpr) & np.isclose(pro.numpy(), want_pro)
        assert hit.any(), (t, want_fpr, want_pro)


def test_pixel_metrics_on_images_of_different_sizes():
    rng = np.random.default_rng(2)
    shapes = [(12, 20), (16, 16), (9, 30)]
    masks = [rng.random(s) > 0.8 for s in shapes]
    maps = [np.round(rng.random(s) + 0.4 * m, 1) for s, m in zip(shapes, masks, strict=True)]
    flat_maps = np.concatenate([m.ravel() for m in maps])
    flat_masks = np.concatenate([m.ravel() for m in masks])
    assert pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(flat_masks, flat_maps))
    fpr, pro = pro_curve(maps, masks)
    regions = []
    for i, m in enumerate(masks):
        lab, k = ndimage.label(m, structure=np.ones((3, 3)))
        regions += [(i, lab == j + 1) for j in range(k)]
    for t in np.unique(flat_maps):
        want_fpr = (flat_maps >= t)[~flat_masks].mean()
        want_pro = np.mean([(maps[i] >= t)[r].mean() for i, r in regions])
        assert (np.isclose(fpr.numpy(), want_fpr) & np.isclose(pro.numpy(), want_pro)).any()
    with pytest.raises(ValueError, match="same H×W"):
        pixel_auroc([maps[0]], [masks[1]])


def _sk_f1_max(labels, scores):
    p, r, t = precision_recall_curve(labels, scores)
    f1 = np.where(p + r > 0, 2 * p * r / np.where(p + r > 0, p + r, 1), 0.0)[:-1]  # last point: no threshold
    # maxima equal as fractions can differ in the last bit here (2pr/(p+r) rounds otherwise): a tolerance
    return f1.max(), t[np.flatnonzero(f1 >= f1.max() - 1e-12)]


@settings(max_examples=60, deadline=None)
@given(scored_labels())
def test_f1_max_matches_sklearn_precision_recall_curve(data):
    scores, labels = data  # few levels -> many ties
    got, thr = f1_max(scores, labels)
    want, want_thr = _sk_f1_max(labels, scores)
    assert got == pytest.approx(want, abs=1e-12)
    assert thr in want_thr and thr == want_thr.max()
    # the threshold reaching it, as "score >= t"
    assert sk_f1_score(labels, scores >= thr) == pytest.approx(got, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(scored_labels(), st.floats(-2.0, 2.0))
def test_f1_score_at_threshold_matches_sklearn(data, t):
    scores, labels = data
    assert f1_score(scores, labels, t) == pytest.approx(sk_f1_score(labels, scores > t, zero_division=0), abs=1e-12)


def test_f1_known_values_and_errors():
    assert f1_max([0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1]) == (1.0, 0.3)
    assert f1_max([1.0, 1.0, 1.0, 1.0], [0, 1, 0, 1])[0] == pytest.approx(2 / 3)  # all tied: all flagged
    assert f1_score([0.1, 0.5, 0.5, 0.9], [0, 0, 1, 1], 0.5) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="anomalous"):
        f1_max([0.1, 0.2], [0, 0])
    with pytest.raises(ValueError, match="anomalous"):
        f1_score([0.1, 0.2], [0, 0], 0.0)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 4), st.integers(4, 24), st.integers(4, 24))
def test_pixel_f1_max_pools_all_pixels(seed, n, h, w):
    rng = np.random.default_rng(seed)
    masks = rng.random((n, h, w)) > 0.7
    masks[0, 0, 0] = True
    maps = np.round(rng.random((n, h, w)) + 0.3 * masks, 2).astype(np.float32)
    got, _ = pixel_f1_max(list(maps), list(masks))
    assert got == pytest.approx(_sk_f1_max(masks.ravel(), maps.ravel())[0], abs=1e-9)
