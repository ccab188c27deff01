"""Decision rules: where the image and pixel thresholds go, from validation normals and the
synthetic defects drawn on them (:mod:`igd_fast.score.synthetic`). What each rule guarantees
and what it only estimates is said in its docstring and recorded with the calibration.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

from .threshold import conformal_index, conformal_threshold

# the largest share of the validation normals' pixels pred_mask may flag (the pixel threshold's
# floor): pixel_F1Score >= 0.8 pixel_F1Max on 9 of 12 development rows at 1e-4 (and 1e-5), 7 at
# 1e-3, 6 at 1e-2 (docs/results/decisions.md)
PIXEL_MAX_FPR = 1e-4
# what the outputs report of a calibration's decisions (report.json, summary.json: "decision")
DECISION_FIELDS = ("image_rule", "guaranteed_fpr", "estimated_fpr", "validation_fpr", "expected_recall",
                   "n_synthetic", "threshold_conformal", "threshold_tail", "pixel_max_fpr", "pixel_floor",
                   "pixel_bound", "expected_pixel_f1")


def decision_record(calib: dict) -> dict:
    """The decision evidence of a calibration record (None for what it lacks)."""
    return {k: calib.get(k) for k in DECISION_FIELDS}


def tail_threshold(scores: list[float], alpha: float) -> float:
    """mean + z(1 - alpha)·std of the normals' scores (a normal fit of their upper tail): the
    false-positive rate is ``alpha`` *if* the scores are Gaussian. An estimate, usable below
    1/n where the conformal rule cannot go; no finite-sample guarantee."""
    v = np.asarray(scores, dtype=np.float64)
    sd = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return float(v.mean() + NormalDist().inv_cdf(1.0 - alpha) * sd)


def recall_at(threshold: float, scores: list[float]) -> float | None:
    """Share of ``scores`` above ``threshold`` (None without scores)."""
    if not scores:
        return None
    return float(np.mean(np.asarray(scores, dtype=np.float64) > threshold))


def guaranteed_fpr(n: int, alpha: float) -> float:
    """The false-positive rate split-conformal guarantees with ``n`` normals: ``alpha`` when
    the k-th score exists (n >= (1 - alpha) / alpha), else 1 / (n + 1) (the largest score)."""
    k = math.ceil((n + 1) * (1 - alpha))
    return alpha if k <= n else 1.0 / (n + 1)


def image_rule(normal: list[float], synthetic: list[float], alpha: float) -> dict:
    """The image threshold and its evidence: the larger of the Gaussian tail estimate of the
    normals' 1 - alpha quantile (:func:`tail_threshold`) and the split-conformal threshold at
    2·alpha. Guaranteed (exchangeable validation and test normals, marginal over validation
    draws): P(a test normal > threshold) <= 2·alpha, or 1/(n+1) when n < (1 - 2 alpha) / (2 alpha)
    normals cannot give that. Estimated: alpha, if the scores' tail is Gaussian. The conformal
    threshold at alpha alone is the largest validation score until n >= 19 (alpha 0.05): one
    unusual normal then sets it, and with it the recall (mvtec_bottle, seed 0: the largest of 21
    validation scores was 4.98 where the test normals' was 4.12, and recall fell to 0.70).
    The expected recall is the synthetic defects' (an estimate: real defects may be subtler or
    plainer than they are)."""
    n = len(normal)
    t_tail, t_conf = tail_threshold(normal, alpha), conformal_threshold(normal, min(2 * alpha, 0.5))
    t = max(t_tail, t_conf)
    return {"threshold": t, "threshold_conformal": t_conf, "threshold_tail": t_tail,
            "image_rule": "max(gaussian tail at alpha, split-conformal at 2 alpha)",
            "guaranteed_fpr": guaranteed_fpr(n, min(2 * alpha, 0.5)), "estimated_fpr": alpha,
            "validation_fpr": float(np.mean(np.asarray(normal) > t)),
            "expected_recall": recall_at(t, synthetic), "n_synthetic": len(synthetic)}  # fmt: skip


def pixel_rule(normal_px: np.ndarray, syn_px: np.ndarray, syn_mask: np.ndarray,
               max_fpr: float = PIXEL_MAX_FPR) -> dict:  # fmt: skip
    """The pixel threshold that maximises pred_mask's F1 with the synthetic defects' pixels as
    positives and the validation normals' pixels as negatives (weighted so that the positives are
    the synthetic images' defect share), among thresholds at or above the floor, the ``1 - max_fpr``
    quantile of the validation normals' pixels (``pixel_bound``: "floor" when the best threshold
    without it would lie below it).

    Negatives come from the normal images, not from the synthetic images around the defects: the
    map is smoothed, a defect's halo spills past its mask, and the synthetic defects (the defect
    model's own generator) are scored more confidently than real ones, so their brighter halo put
    the F1 optimum 2-4x above the real defects' (docs/results/decisions.md).
    Guaranteed: at most ``max_fpr`` of the validation normals' pixels are flagged. Estimated:
    the same rate on future normal pixels (a map's pixels are not independent), and
    ``expected_pixel_f1``, the weighted F1 at the threshold (real defects may be subtler)."""
    floor = float(np.quantile(normal_px, 1.0 - max_fpr)) if normal_px.size else 0.0
    out = {"pixel_threshold": floor, "pixel_max_fpr": max_fpr, "pixel_floor": floor, "pixel_bound": "floor",
           "expected_pixel_f1": None}  # fmt: skip
    pos = syn_px[syn_mask]
    if pos.size == 0 or normal_px.size == 0:
        return out
    prevalence = float(syn_mask.mean())
    w = pos.size * (1.0 - prevalence) / (prevalence * normal_px.size)  # weight of one negative
    ps, ns = np.sort(pos), np.sort(normal_px)  # float32 copies: the normals' pixels can be many

    def f1(t: np.ndarray, side: str) -> np.ndarray:  # side "right": flag > t; "left": flag >= t
        tp = ps.size - np.searchsorted(ps, t, side=side)
        fp = (ns.size - np.searchsorted(ns, t, side=side)) * w
        return 2 * tp / (tp + fp + ps.size)

    # at or above the floor: the floor, then every distinct value above it (flagged: strictly above)
    cand = np.unique(np.r_[np.float32(floor), ps[ps > floor], ns[ns > floor]]).astype(np.float64)
    cand[0] = floor
    f_above = f1(cand, "right")
    i = int(np.argmax(f_above))  # the lowest of equal bests
    # below it, the best threshold under each positive value flags what is >= that value
    f_below = f1(np.unique(ps[ps <= floor]), "left")
    out.update(pixel_threshold=float(cand[i]), expected_pixel_f1=float(f_above[i]),
               pixel_bound="floor" if f_below.size and f_below.max() > f_above[i] else "synthetic")  # fmt: skip
    return out


# the p-value below which eval says the test normals are not exchangeable with the validation normals
SHIFT_P = 0.01


def exchangeability_p(validation: list[float], test: list[float], j: int, n_perm: int = 20000,
                      seed: int = 0) -> float:  # fmt: skip
    """One-sided permutation p-value (seeded, ``n_perm`` permutations) of as many ``test`` scores
    above the ``j``-th smallest ``validation`` score as observed, or more: the count the image
    rule's promise is about (its split-conformal threshold is that order statistic, its threshold
    at or above it). Exact in distribution when the two sets are exchangeable, whatever the scores'
    law, which is what the rule assumes."""
    # the count depends only on the scores' order, so the scores themselves are permuted
    v = np.asarray([*validation, *test], dtype=np.float64)
    n, rng = len(validation), np.random.default_rng(seed)

    def count(r: np.ndarray) -> np.ndarray:
        return np.sum(r[:, n:] > np.sort(r[:, :n], axis=1)[:, j - 1 : j], axis=1)

    observed, hits = count(v[None])[0], 0
    for start in range(0, n_perm, 1000):  # in blocks: bounded memory for large splits
        perm = rng.permuted(np.broadcast_to(v, (min(1000, n_perm - start), v.size)), axis=1)
        hits += int(np.sum(count(perm) >= observed))
    return (hits + 1) / (n_perm + 1)


def check_test_normals(test_normal: list[float], validation: list[float], threshold: float,
                       alpha: float, promised_fpr: float | None) -> dict | None:  # fmt: skip
    """Do a test split's normals look like the validation normals the image threshold came from?
    The share flagged beside the rule's promised rate, the permutation p-value of so many test
    normals above the rule's split-conformal order statistic (:func:`exchangeability_p`; below
    :data:`SHIFT_P`: "shifted"), and how the test normals rank against the validation normals
    (AUROC 0.5 when exchangeable, 1 when every test normal scores above every validation normal).
    "shifted" says the validation normals do not represent the test normals (other light, another
    part of the scene, a changed process): the promise does not hold for them; recalibrate on
    normals from the test conditions. None without (finite) test normals or with fewer than 2
    validation normals."""
    from ..metrics import auroc

    test_normal = [s for s in test_normal if math.isfinite(s)]  # a NaN score is flagged, not ranked
    n, m = len(validation), len(test_normal)
    if not m or n < 2:
        return None
    p = exchangeability_p(validation, test_normal, conformal_index(n, min(2 * alpha, 0.5)))
    return {"test_normals": m, "n_validation": n, "flagged": sum(1 for s in test_normal if s > threshold),
            "promised_fpr": promised_fpr, "p_value": p, "verdict": "shifted" if p < SHIFT_P else "consistent",
            "auroc_test_vs_validation_normals": auroc([*validation, *test_normal], [0] * n + [1] * m)}  # fmt: skip
