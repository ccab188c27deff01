"""Score images with an exported IR in anomalib's OpenVINOInferencer and compare with the
Scorer (issue 32). Needs anomalib (2.x) installed beside OpenVINO; not part of the tests: its
torchvision pin does not install beside this package's torch in CI (docs/deployment.md).

    python scripts/check_anomalib_inferencer.py --model runs/CAT --xml deploy/model.xml IMAGE...

Prints one line per image (anomalib's pred_score / pred_label against the Scorer's) and exits
1 when a pred_score differs by more than 1e-4 or a label differs.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="the model directory the IR was exported from")
    p.add_argument("--xml", required=True, help="the IR written by igd-fast export --format openvino")
    p.add_argument("images", nargs="+")
    args = p.parse_args()
    from anomalib.deploy import OpenVINOInferencer
    from PIL import Image

    from igd_fast.score import Scorer

    inferencer = OpenVINOInferencer(path=args.xml, device="CPU", config={"INFERENCE_PRECISION_HINT": "f32"})
    scorer = Scorer(args.model, device="cpu")
    bad = 0
    for path in args.images:
        img = np.asarray(Image.open(path).convert("RGB"))
        got = inferencer.predict(img.transpose(2, 0, 1)[None].astype(np.float32) / 255.0)
        ref = scorer.predict(img)
        score = float(np.asarray(got.pred_score).reshape(-1)[0])
        label = int(np.asarray(got.pred_label).reshape(-1)[0])
        ok = abs(score - ref.pred_score) <= 1e-4 and label == ref.pred_label
        bad += not ok
        print(f"{path}: anomalib {score:.6f} {label}  scorer {ref.pred_score:.6f} {ref.pred_label}  "
              f"{'ok' if ok else 'DIFFERS'}")  # fmt: skip
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
