"""Decision rules side by side on one trained model and its test split: where each rule puts the
image and pixel thresholds (from the validation normals and the synthetic defects drawn on
them, as ``igd_fast.score.calibrate`` does) and what that gives on the test images.

    python benchmarks/quality/decision_rules.py MODEL --data ROOT --category CAT [--json OUT]

Pixel rules, as pixel_F1Score / pixel_F1Max on the test split:
  * ``rule``: today's (:func:`igd_fast.score.decide.pixel_rule`);
  * ``synthetic-images``: the rule before it (the best F1 on the synthetic images' own pixels,
    above the 99th percentile of the normals' pixels);
  * ``floor q``: the ``1 - q`` quantile of the validation normals' pixels alone.
Image rules, as F1Score, accuracy and the test normals' false-positive rate, beside F1Max, the
F1 of flagging every image, and the best F1 among thresholds that keep the test normals' rate
at most 2 alpha: today's rule on the validation scores as calibrated (their terms standardised
with statistics that include the image itself) and on leave-one-out scores (each image
standardised by the others' statistics: cross-fitted). The model directory is not written to.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from igd_fast.checkpoint import validation_files  # noqa: E402
from igd_fast.data import load_mask  # noqa: E402
from igd_fast.data.layouts import resolve_layout  # noqa: E402
from igd_fast.metrics import accuracy, f1_max, f1_score  # noqa: E402
from igd_fast.score import Scorer  # noqa: E402
from igd_fast.score.calibrate import Calibrator, _pixels  # noqa: E402
from igd_fast.score.decide import image_rule, pixel_rule  # noqa: E402
from igd_fast.score.threshold import THRESHOLD_JSON  # noqa: E402

FLOORS = (1e-2, 1e-3, 1e-4, 1e-5)


class Evidence(Calibrator):
    """A calibrator that keeps what its rules saw: the validation terms, the normals' pixels, the
    synthetic defects' pixels and masks."""

    def _record(self, out, scores, maps, fitted, syn):
        self.terms = {k: v.double().numpy() for k, v in self._terms(out).items()}
        self.normal_px = _pixels(maps)
        self.syn_px = _pixels(syn.maps)
        self.syn_mask = np.concatenate([m.reshape(-1).numpy() for m in syn.masks])
        return super()._record(out, scores, maps, fitted, syn)


def f1_at_many(scores: np.ndarray, labels: np.ndarray):
    """threshold -> F1 of ``scores > threshold``, from one sort (for scans over many thresholds;
    single thresholds go through :func:`igd_fast.metrics.f1_score`, as eval's do)."""
    order = np.argsort(-scores, kind="stable")
    v, lab = scores[order], labels[order]
    tp, fp, pos = np.cumsum(lab), np.cumsum(~lab), int(lab.sum())

    def at(t: float) -> float:
        k = int(np.searchsorted(-v, -t, side="left"))  # values > t
        return 0.0 if k == 0 else float(2 * tp[k - 1] / (tp[k - 1] + fp[k - 1] + pos))

    return at


def synthetic_images_rule(ev: Evidence) -> float:
    """The rule before today's: the best F1 on the synthetic images' own pixels above the floor
    at 1 % of the normals' pixels."""
    floor = float(np.quantile(ev.normal_px, 0.99))
    at = f1_at_many(ev.syn_px.astype(np.float64), ev.syn_mask)
    cand = np.unique(ev.syn_px[ev.syn_px > floor])
    cand = cand[:: max(1, cand.size // 4000)]  # a grid of 4000 is plenty for a threshold
    return float(max(np.r_[floor, cand], key=at))


def leave_one_out(terms: dict[str, np.ndarray], norm: str = "standard") -> np.ndarray:
    """Each validation image's score with its terms standardised by the other images' statistics,
    combined as ``score_norm`` combines them (standard: summed; max: the largest)."""
    n = len(next(iter(terms.values())))
    z = np.zeros((len(terms), n))
    for j, v in enumerate(terms.values()):
        for i in range(n):
            o = np.delete(v, i)
            sd = o.std(ddof=1) if o.size > 1 else 0.0
            z[j, i] = (v[i] - o.mean()) / (sd if sd > 0 else 1.0)
    return z.max(axis=0) if norm == "max" else z.sum(axis=0)


def image_row(threshold: float, s: np.ndarray, y: np.ndarray) -> dict:
    p = s > threshold
    return {"threshold": threshold, "F1Score": f1_score(s, y, threshold), "accuracy": accuracy(s, y, threshold),
            "test_normal_fpr": float(p[y == 0].mean()), "recall": float(p[y == 1].mean())}  # fmt: skip


def collect(model_dir: str, data: str, category: str, alpha: float):
    """(evidence, calibration record, test maps, test masks, test scores, test labels) of a fresh
    calibration of a copy of ``model_dir``."""
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        shutil.copytree(model_dir, model, ignore=shutil.ignore_patterns("eval_*", THRESHOLD_JSON))
        scorer = Scorer(model, device="cpu", alpha=alpha)
        ev = Evidence(scorer.module, scorer.runner, alpha, scorer.recipe["excess_quantile"])
        record = ev.fit(validation_files(model))
        scorer.use_calibration(record)
        samples = resolve_layout(data, category).test_samples()
        maps, masks, scores = [], [], []
        for smp, r in zip(samples, scorer.score_paths([s.path for s in samples]), strict=True):
            maps.append(r.map.reshape(-1))
            masks.append(load_mask(smp.mask, r.map.shape)[0].numpy().reshape(-1) > 0.5)
            scores.append(r.score)
    labels = np.array([int(smp.defect != "good") for smp in samples])
    return ev, record, np.concatenate(maps).astype(np.float64), np.concatenate(masks), np.asarray(scores), labels


def rows(ev: Evidence, record: dict, maps, masks, s, y, alpha: float) -> dict:
    """Every rule's threshold and test result (the module doc)."""
    px_max = f1_max(maps, masks)[0]
    pixel = {"rule": pixel_rule(ev.normal_px, ev.syn_px, ev.syn_mask)["pixel_threshold"],
             "synthetic-images": synthetic_images_rule(ev),
             **{f"floor {q:g}": float(np.quantile(ev.normal_px, 1 - q)) for q in FLOORS}}  # fmt: skip
    img_max = f1_max(s, y)[0]
    rates = [image_row(t, s, y) for t in np.r_[s - 1e-9, s.max() + 1.0]]
    capped = max(r["F1Score"] for r in rates if r["test_normal_fpr"] <= 2 * alpha)
    val = {"as calibrated": list(record["validation_scores"].values()),
           "leave-one-out": list(leave_one_out(ev.terms, ev.module.score_norm))}
    return {"n_validation": len(val["as calibrated"]), "pixel_F1Max": px_max,
            "pixel": {k: {"threshold": t, "F1Score": (f := f1_score(maps, masks, t)), "ratio": f / px_max}
                      for k, t in pixel.items()},
            "image_F1Max": img_max, "image_F1_flag_all": float(2 * y.sum() / (y.sum() + y.size)),
            "image_F1Max_within_2alpha": capped,
            "image": {k: image_row(image_rule(v, record["synthetic_scores"], alpha)["threshold"], s, y)
                      for k, v in val.items()}}  # fmt: skip


def show(category: str, out: dict, alpha: float) -> None:
    print(f"{category}: pixel F1Max {out['pixel_F1Max']:.3f}; image F1Max {out['image_F1Max']:.3f}, flag-all F1 "
          f"{out['image_F1_flag_all']:.3f}, F1Max with test-normal FPR <= {2 * alpha:g}: "
          f"{out['image_F1Max_within_2alpha']:.3f}; {out['n_validation']} validation normals")  # fmt: skip
    for k, r in out["pixel"].items():
        print(f"  pixel {k:17s} threshold {r['threshold']:8.3f}  F1Score {r['F1Score']:.3f}  ratio {r['ratio']:.2f}")
    for k, r in out["image"].items():
        print(f"  image {k:17s} threshold {r['threshold']:8.3f}  F1Score {r['F1Score']:.3f}  "
              f"accuracy {r['accuracy']:.3f}  test-normal FPR {r['test_normal_fpr']:.2f}  recall {r['recall']:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--data", required=True)
    ap.add_argument("--category", required=True)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--json", help="also write the rows here")
    a = ap.parse_args()
    out = rows(*collect(a.model, a.data, a.category, a.alpha), alpha=a.alpha)
    show(a.category, out, a.alpha)
    if a.json:
        Path(a.json).write_text(json.dumps({"model": str(a.model), "category": a.category, **out}, indent=1))


if __name__ == "__main__":
    main()
