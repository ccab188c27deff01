"""The decision rules (igd_fast.score.decide): the image threshold's false-positive rate on
fresh normals from a known law, the pixel threshold's constraint and optimality against a
brute-force search, the synthetic defects they use, and the record they leave."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from igd_fast.score.decide import (
    check_test_normals,
    exchangeability_p,
    image_rule,
    pixel_rule,
    recall_at,
    tail_threshold,
)
from igd_fast.score.synthetic import per_image, synthetic_defects
from igd_fast.score.threshold import conformal_index


@pytest.mark.parametrize("law", ["normal", "exponential"])
@pytest.mark.parametrize("n", [6, 20, 60])
def test_the_image_threshold_holds_its_guaranteed_rate_on_fresh_normals(n, law):
    alpha, rng = 0.05, np.random.default_rng(n)
    draw = rng.normal if law == "normal" else rng.exponential
    fprs = []
    for _ in range(2000):
        rec = image_rule(list(draw(size=n)), [], alpha)
        fprs.append(float(np.mean(draw(size=400) > rec["threshold"])))
    # marginal guarantee, whatever the law: E[FPR] <= 2 alpha, or 1/(n+1) below n = 9
    assert rec["guaranteed_fpr"] == (2 * alpha if n >= 9 else 1 / (n + 1))
    assert np.mean(fprs) <= rec["guaranteed_fpr"] + 0.003
    if law == "normal" and n >= 20:  # where the tail model holds, the rate is near alpha
        assert np.mean(fprs) < 1.5 * alpha


def test_tail_threshold_estimates_the_rate_for_gaussian_scores():
    alpha, rng = 0.01, np.random.default_rng(1)
    fprs = [float(np.mean(rng.normal(3, 2, 2000) > tail_threshold(list(rng.normal(3, 2, 200)), alpha)))
            for _ in range(300)]  # fmt: skip
    assert abs(np.mean(fprs) - alpha) < 0.004


def test_expected_recall_is_the_share_of_synthetic_scores_above():
    assert recall_at(1.0, [0.5, 1.5, 2.0, 1.0]) == 0.5
    assert recall_at(1.0, []) is None
    rec = image_rule(list(np.linspace(0.0, 0.3, 30)), [0.25, 5.0], 0.05)
    assert rec["threshold"] == pytest.approx(max(rec["threshold_tail"], rec["threshold_conformal"]))
    assert rec["expected_recall"] == 0.5 and rec["n_synthetic"] == 2


def _weighted_f1(t, normal, pos, prevalence):
    w = pos.size * (1 - prevalence) / (prevalence * normal.size)
    tp, fp = (pos > t).sum(), (normal > t).sum() * w
    return 2 * tp / (tp + fp + pos.size)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("shift", [2.5, 6.0, 0.5])
def test_pixel_threshold_is_the_best_synthetic_f1_above_the_floor(seed, shift):
    rng = np.random.default_rng(seed)
    normal = rng.normal(0, 1, 5000).astype(np.float32)
    mask = rng.random(3000) < 0.1
    # the synthetic images' own background is ignored: it is what a bright halo would be
    syn = np.where(mask, rng.normal(shift, 1, 3000), rng.normal(3, 1, 3000)).astype(np.float32)
    got = pixel_rule(normal, syn, mask, max_fpr=0.02)
    t, floor, pos = got["pixel_threshold"], got["pixel_floor"], syn[mask]
    assert floor == pytest.approx(np.quantile(normal, 0.98))
    assert np.mean(normal > t) <= 0.02 + 1e-9 and t >= floor
    brute = max(_weighted_f1(c, normal, pos, mask.mean()) for c in np.unique(np.r_[normal, pos]))
    best_above = max(_weighted_f1(c, normal, pos, mask.mean()) for c in np.unique(np.r_[normal, pos, floor])
                     if c >= floor)  # fmt: skip
    assert _weighted_f1(t, normal, pos, mask.mean()) == pytest.approx(best_above, abs=1e-9)
    # "synthetic": the floor did not bind, the threshold is the best one overall
    assert (got["pixel_bound"] == "synthetic") == (best_above >= brute - 1e-12)
    assert got["expected_pixel_f1"] == pytest.approx(_weighted_f1(t, normal, pos, mask.mean()), abs=1e-9)


def test_weak_synthetic_defects_raise_the_pixel_threshold_above_the_floor():
    rng = np.random.default_rng(0)
    normal = rng.normal(0, 1, 20000).astype(np.float32)
    mask = rng.random(4000) < 0.05
    syn = np.where(mask, rng.normal(3.0, 0.5, 4000), 0.0).astype(np.float32)
    got = pixel_rule(normal, syn, mask, max_fpr=0.05)  # a loose floor (1.64 sigma): F1 wants more
    assert got["pixel_bound"] == "synthetic" and got["pixel_threshold"] > got["pixel_floor"] + 0.3


def test_pixel_threshold_without_synthetic_evidence_is_the_floor():
    normal = np.arange(1000, dtype=np.float32)
    got = pixel_rule(normal, np.zeros(0, np.float32), np.zeros(0, bool), max_fpr=0.01)
    assert got["pixel_threshold"] == pytest.approx(np.quantile(normal, 0.99))
    assert got["pixel_bound"] == "floor" and got["expected_pixel_f1"] is None


def test_synthetic_defects_are_seeded_masked_and_in_the_normalised_range():
    x = torch.randn(3, 3, 40, 56).clamp(-2, 2)
    a, ma = synthetic_defects(x, 2, torch.Generator().manual_seed(0))
    b, mb = synthetic_defects(x, 2, torch.Generator().manual_seed(0))
    assert a.shape == (6, 3, 40, 56) and ma.shape == (6, 1, 40, 56)
    torch.testing.assert_close(a, b) and torch.testing.assert_close(ma, mb)
    assert set(torch.unique(ma).tolist()) <= {0.0, 1.0} and ma.sum() > 0
    outside = (ma == 0).expand_as(a)
    src = x.repeat_interleave(2, 0)
    # pixels outside the masks are the image's own (up to the [0, 1] clamp of the round trip)
    from igd_fast.data import imagenet_normalise, imagenet_pixels

    torch.testing.assert_close(a[outside], imagenet_normalise(imagenet_pixels(src))[outside], atol=1e-5, rtol=0)
    assert per_image(6) == 11 and per_image(100) == 1 and per_image(1) == 16


def _count_above(n: int, j: int):
    """The statistic exchangeability_p tests: test scores above the j-th smallest validation score."""

    def stat(val, test, axis=-1):
        return np.sum(test > np.sort(val, axis=axis)[..., j - 1 : j], axis=axis)

    return stat


@pytest.mark.parametrize(("n", "m", "shift"), [(4, 5, 0.0), (5, 6, 1.5), (6, 7, 0.5)])
def test_exchangeability_p_equals_scipys_exact_permutation_test(n, m, shift):
    from scipy.stats import permutation_test

    rng = np.random.default_rng(n)
    val, test = rng.normal(size=n), rng.normal(shift, 1.0, size=m)
    j = conformal_index(n, 0.1)
    want = permutation_test((val, test), _count_above(n, j), permutation_type="independent", alternative="greater",
                            n_resamples=10**6, vectorized=True).pvalue  # fmt: skip
    assert abs(exchangeability_p(list(val), list(test), j) - want) < 0.01


def test_the_normals_check_rarely_cries_shift_on_exchangeable_normals_and_sees_a_real_one():
    rng = np.random.default_rng(0)
    calls = [check_test_normals(list(rng.normal(size=20)), list(rng.normal(size=n)), 1.0, 0.05, 0.1)["verdict"]
             for n in (6, 21) for _ in range(150)]  # fmt: skip
    assert calls.count("shifted") / len(calls) <= 0.02  # SHIFT_P = 0.01, with room for 300 draws
    val = list(rng.normal(size=6))
    c = check_test_normals(list(rng.normal(3.0, 1.0, size=20)), val, max(val), 0.05, 1 / 7)
    assert c["verdict"] == "shifted" and c["p_value"] < 0.001 and c["auroc_test_vs_validation_normals"] > 0.95
    assert c["flagged"] >= 15 and c["promised_fpr"] == 1 / 7 and (c["n_validation"], c["test_normals"]) == (6, 20)
    assert check_test_normals([], val, 0.0, 0.05, 0.1) is None
    assert check_test_normals([1.0], [0.0], 0.0, 0.05, 0.1) is None  # one validation normal: nothing to rank
    assert check_test_normals([float("nan")] * 3, val, 0.0, 0.05, 0.1) is None  # NaN scores are not ranked
