"""The decision threshold, calibrated on the validation normals of the training split.

Rule (split-conformal): with n validation-normal scores sorted s_(1) <= ... <= s_(n),
the threshold is s_(k) with k = ceil((n + 1)(1 - alpha)), and an image is anomalous
when its score is **greater** than it. If the validation images and future normal
images are exchangeable, a new normal image is then flagged with probability at most
alpha (the false-alarm rate is the only error we can control: no anomalies are seen at
training time). When n is too small for the requested alpha (k > n, i.e. n < 1/alpha - 1)
the rule falls back to the maximum, whose false-alarm rate is 1/(n + 1).
Default alpha = 0.05; with the usual 10 % validation split of MVTec (20-40 images) this
is the maximum validation score.

The per-pixel colour scale for heat-maps is calibrated from the same images:
``map_low`` = median validation pixel value, ``map_high`` = max validation pixel value;
overlays put ``map_low`` at 0 and ``map_high`` at 0.5 on the jet scale, so anything red
is well beyond any pixel of a normal validation image.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path

THRESHOLD_JSON = "threshold.json"
DEFAULT_ALPHA = 0.05
MODEL_FILES = ("global.pt", "local.pt")


def conformal_threshold(scores: list[float], alpha: float = DEFAULT_ALPHA) -> float:
    """The k-th smallest score, k = ceil((n + 1)(1 - alpha)), capped at n (see module doc)."""
    if not scores:
        raise ValueError("no validation scores to calibrate a threshold on")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    s = sorted(float(v) for v in scores)
    k = min(math.ceil((len(s) + 1) * (1 - alpha)), len(s))
    return s[k - 1]


def model_signature(model_dir: str | Path) -> dict[str, str]:
    """SHA-256 of the model files: a cached threshold is stale when they change. Content,
    not mtime, so the cache survives copying the model directory to another machine."""
    out = {}
    for name in MODEL_FILES:
        h = hashlib.sha256()
        with open(Path(model_dir) / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        out[name] = h.hexdigest()
    return out


def read_threshold(model_dir: str | Path, alpha: float) -> dict | None:
    """The cached calibration, or None when missing, stale or for another alpha."""
    p = Path(model_dir) / THRESHOLD_JSON
    try:
        d = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    if d.get("signature") != model_signature(model_dir) or d.get("alpha") != alpha:
        return None
    return d


def write_threshold(model_dir: str | Path, record: dict) -> None:
    """Atomic write (temp file + rename) so concurrent readers never see half a file."""
    p = Path(model_dir) / THRESHOLD_JSON
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".threshold.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=2)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
