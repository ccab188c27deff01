"""Score images with an exported IR in anomalib's OpenVINOInferencer and compare with the
Scorer (issue 32). Not part of the tests: anomalib 2.x needs torchvision, whose PyPI wheels are
built against PyPI's CUDA torch and do not load beside the CPU torch this package installs
(docs/deployment.md). So the check runs in two halves, each where its package is installed:

    # where igd_fast is installed: the Scorer's results
    python scripts/check_anomalib_inferencer.py --model runs/CAT --write-reference ref.json IMAGE...
    # where anomalib (2.x) and OpenVINO are installed (igd_fast not needed)
    python scripts/check_anomalib_inferencer.py --xml deploy/model.xml --reference ref.json

With both packages in one environment, ``--model M --xml X IMAGE...`` does both at once.
Prints one line per image and exits 1 when a pred_score differs by more than 1e-4, a label
differs, more than 0.1 % of the map's pixels differ by more than 1e-3 (the largest difference is
printed: OpenVINO itself moves a few ill-conditioned MS-SSIM pixels by up to 2e-2) or pred_mask
differs away from the threshold.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

SCORE_TOL, MAP_TOL = 1e-4, 1e-3


def reference(model: str, images: list[str]) -> list[dict]:
    """The Scorer's pred_score, pred_label and map in [0, 1] (0.5 at the pixel threshold) per image."""
    import torch

    from igd_fast.score import Scorer

    scorer = Scorer(model, device="cpu")
    post, out = scorer.post_processor, []
    for path in images:
        p = scorer.predict(path)
        amap = None if p.anomaly_map is None else post.map_01(torch.from_numpy(p.anomaly_map)).numpy()
        out.append({"path": path, "pred_score": p.pred_score, "pred_label": p.pred_label,
                    "anomaly_map": None if amap is None else amap.tolist()})  # fmt: skip
    return out


def compare(xml: str, ref: list[dict]) -> int:
    from anomalib.deploy import OpenVINOInferencer
    from PIL import Image

    inferencer = OpenVINOInferencer(path=xml, device="CPU", config={"INFERENCE_PRECISION_HINT": "f32"})
    bad = 0
    for r in ref:
        img = np.asarray(Image.open(r["path"]).convert("RGB"))
        got = inferencer.predict(img.transpose(2, 0, 1)[None].astype(np.float32) / 255.0)
        score = float(np.asarray(got.pred_score).reshape(-1)[0])
        label = int(np.asarray(got.pred_label).reshape(-1)[0])
        ok = abs(score - r["pred_score"]) <= SCORE_TOL and label == r["pred_label"]
        line = (f"{r['path']} {img.shape[1]}x{img.shape[0]}: anomalib {score:.6f} {label}  "
                f"scorer {r['pred_score']:.6f} {r['pred_label']}")  # fmt: skip
        if r["anomaly_map"] is not None and got.anomaly_map is not None:
            want = np.asarray(r["anomaly_map"], np.float32)
            amap = np.asarray(got.anomaly_map, np.float32).reshape(want.shape)
            diff = np.abs(amap - want)
            err, share = float(diff.max()), float((diff > MAP_TOL).mean())
            mask = np.asarray(got.pred_mask).reshape(want.shape).astype(bool)
            clear = np.abs(want - 0.5) > MAP_TOL  # away from the threshold
            flips = int((mask != (want > 0.5))[clear].sum())
            ok = ok and share <= 1e-3 and flips == 0
            line += f"  map max|diff| {err:.1e} ({share:.3%} of pixels > {MAP_TOL:g})  mask flips {flips}"
        bad += not ok
        print(line + ("  ok" if ok else "  DIFFERS"))
    return 1 if bad else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="the model directory the IR was exported from (runs the Scorer)")
    p.add_argument("--xml", help="the IR written by igd-fast export --format openvino (runs anomalib)")
    p.add_argument("--write-reference", metavar="FILE", help="write the Scorer's results here and stop")
    p.add_argument("--reference", metavar="FILE", help="the Scorer's results written by --write-reference")
    p.add_argument("images", nargs="*")
    a = p.parse_args()
    if a.reference:
        with open(a.reference) as f:
            ref = json.load(f)
    elif a.model and a.images:
        ref = reference(a.model, a.images)
    else:
        p.error("give --model and images (the Scorer's half), or --reference FILE")
    if a.write_reference:
        with open(a.write_reference, "w") as f:
            json.dump(ref, f)
        return 0
    if not a.xml:
        p.error("--xml is needed to compare")
    return compare(a.xml, ref)


if __name__ == "__main__":
    sys.exit(main())
