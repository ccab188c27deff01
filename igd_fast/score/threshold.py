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
import warnings
from pathlib import Path

from ..checkpoint import MODEL_FILES, atomic_write_bytes

THRESHOLD_JSON = "threshold.json"
DEFAULT_ALPHA = 0.05
# fields a usable cached record must hold as finite numbers
NUMERIC_FIELDS = ("threshold", "map_low", "map_high")


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
    """SHA-256 of the model files present: a cached threshold is stale when they change.
    Content, not mtime, so the cache survives copying the model directory elsewhere."""
    out = {}
    for name in MODEL_FILES:
        p = Path(model_dir) / name
        if not p.is_file():
            continue
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        out[name] = h.hexdigest()
    return out


def _problem(d: object) -> str | None:
    """Why a parsed threshold.json cannot be used as is, or None."""
    if not isinstance(d, dict):
        return f"it holds a JSON {type(d).__name__}, not an object"
    for k in NUMERIC_FIELDS:
        v = d.get(k)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return f"field {k!r} is {v!r}, not a number"
        if not math.isfinite(v):
            return f"field {k!r} is {v}, not finite"
    return None


def read_threshold(model_dir: str | Path, alpha: float) -> dict | None:
    """The cached calibration, or None when missing, stale or for another alpha. A
    damaged file (not an object, a NaN/inf or non-numeric threshold) is ignored with a
    warning naming it, so the caller recalibrates and rewrites it."""
    p = Path(model_dir) / THRESHOLD_JSON
    if not p.is_file():
        return None
    try:
        d = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        warnings.warn(f"ignoring unreadable {p} ({e}); recalibrating", stacklevel=2)
        return None
    why = _problem(d)
    if why is not None:
        warnings.warn(f"ignoring {p}: {why}; recalibrating", stacklevel=2)
        return None
    if d.get("signature") != model_signature(model_dir) or d.get("alpha") != alpha:
        return None
    return d


def write_threshold(model_dir: str | Path, record: dict) -> None:
    """Atomic write (temp file + rename) so concurrent readers never see half a file."""
    data = json.dumps(record, indent=2).encode()
    atomic_write_bytes(Path(model_dir) / THRESHOLD_JSON, lambda f: f.write(data))
