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

``pred_score`` (anomalib's name) puts the threshold at 0.5 on [0, 1] by a logistic of
the raw score s, with the spread of the validation-normal scores as its scale:

    pred_score = 1 / (1 + exp(-(s - threshold) / score_scale)),
    score_scale = max - min of the validation-normal scores (|threshold|, or 1, when
    that is 0: a single validation image).

It is increasing, so image AUROC / F1Max are the same on pred_score as on s (up to
float64 saturation at 1 beyond ~37 scales above the threshold); pred_score > 0.5
exactly when s > threshold (a score within rounding of the threshold is nudged to the
next float above 0.5). Logistic rather than anomalib's clipped min-max, because with
normal-only validation a min-max scale saturates most anomalies at 1 and ties them.

``pred_mask`` uses a pixel threshold calibrated the same way on per-image maxima:
``pixel_threshold`` = the same split-conformal rule applied to each validation
image's largest map value, so a new normal image has *any* pixel flagged with
probability at most alpha (with fewer than 19 validation images: the largest
validation pixel). A pixel is anomalous when its map value is > pixel_threshold.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..checkpoint import atomic_write_bytes
from .components import COMPONENTS
from .recipe import legacy_scoring
from .residual import valid_stats

THRESHOLD_JSON = "threshold.json"
DEFAULT_ALPHA = 0.05
# fields a usable cached record must hold as finite numbers
NUMERIC_FIELDS = ("threshold", "map_low", "map_high", "score_scale", "pixel_threshold")
# added after the first releases: a cache without them is stale, not damaged
LATER_FIELDS = ("score_scale", "pixel_threshold")
# numbers only some scoring options record (checked when present)
OPTIONAL_FIELDS = ("excess_level",)
NORMALISATION = (
    "pred_score = 1 / (1 + exp(-(score - threshold) / score_scale)); score_scale = max - min of the "
    "validation-normal scores; 0.5 = threshold"
)
RULE = (
    "the larger of the validation scores' Gaussian tail estimate at 1 - alpha (mean + z std) and their split-conformal "
    "threshold at 2 alpha (k-th smallest, k = ceil((n+1)(1-2 alpha)), at most n): a test normal exceeds it with "
    "probability <= 2 alpha (1/(n+1) for n too small), about alpha for Gaussian scores; anomalous when score > "
    "threshold; expected_recall: the share of synthetic defects on the validation normals above it"
)
PIXEL_RULE = (
    "the threshold maximising pred_mask's F1 with synthetic defects' pixels as positives and the validation normals' "
    "pixels as negatives (weighted to the synthetic images' defect share), among those at or above the floor, the "
    "validation normals' pixels' 1 - pixel_max_fpr quantile (at most pixel_max_fpr of them flagged); pixel anomalous "
    "when map > pixel_threshold"
)
# the version of the rules above: a cached calibration made under other rules is stale
RULES_VERSION = 4


def conformal_threshold(scores: list[float], alpha: float = DEFAULT_ALPHA) -> float:
    """The k-th smallest score, k = ceil((n + 1)(1 - alpha)), capped at n (see module doc)."""
    if not scores:
        raise ValueError("no validation scores to calibrate a threshold on")
    bad = sum(1 for v in scores if not math.isfinite(float(v)))
    if bad:  # a NaN threshold labels every image normal
        raise ValueError(f"{bad} of {len(scores)} validation scores are not finite (NaN/inf): the model's output is "
                         "not a number on those images; retrain it (a NaN threshold would call every image normal)")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    s = sorted(float(v) for v in scores)
    return s[conformal_index(len(s), alpha) - 1]


def conformal_index(n: int, alpha: float) -> int:
    """Which order statistic of ``n`` scores the split-conformal threshold is (1 = the smallest)."""
    return min(math.ceil((n + 1) * (1 - alpha)), n)


def score_scale(scores: list[float], threshold: float) -> float:
    """The spread (max - min) of the validation-normal scores; |threshold| (or 1) when
    they do not spread, so the normalisation is always defined."""
    spread = max(scores) - min(scores) if scores else 0.0
    if spread > 0 and math.isfinite(spread):
        return float(spread)
    return abs(float(threshold)) or 1.0


def logistic(scores: Tensor, threshold: float, scale: float) -> Tensor:
    """pred_score of raw scores in their own dtype (see the module doc): the one formula,
    for the post-processor and the exported graph alike."""
    p = 0.5 * (1.0 + torch.tanh((scores - threshold) / (2.0 * scale)))  # the logistic without overflow
    # keep pred_score > 0.5 <=> score > threshold through rounding near 0.5: the next float above 0.5
    above = torch.full_like(p, 0.5 + torch.finfo(p.dtype).eps / 2)
    return torch.where((scores > threshold) & (p <= 0.5), above, p)


def normalise_scores(scores, threshold: float, scale: float) -> np.ndarray:
    """pred_score of raw scores (any array-like; float64 array out); see the module doc."""
    return logistic(torch.as_tensor(np.asarray(scores, dtype=np.float64)), threshold, scale).numpy()


def model_signature(model_dir: str | Path) -> dict[str, str]:
    """SHA-256 of the component files present: a cached threshold is stale when they change.
    Content, not mtime, so the cache survives copying the model directory elsewhere."""
    out = {}
    for name in (c.file for c in COMPONENTS.values()):
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
    for k in (*NUMERIC_FIELDS, *OPTIONAL_FIELDS):
        if k in (*LATER_FIELDS, *OPTIONAL_FIELDS) and k not in d:
            continue  # an older cache (stale, recalibrated silently) or another option's: not damaged
        v = d.get(k)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return f"field {k!r} is {v!r}, not a number"
        if not math.isfinite(v):
            return f"field {k!r} is {v}, not finite"
        if k == "score_scale" and v <= 0:  # pred_score would fall as the score rises
            return f"field 'score_scale' is {v}, not > 0"
    for kind, st in [*(d.get("term_stats") or {}).items(), *(d.get("map_stats") or {}).items()]:
        ok = isinstance(st, dict) and all(
            isinstance(st.get(k), (int, float)) and not isinstance(st.get(k), bool) and math.isfinite(st[k])
            for k in ("mean", "std")
        )
        if not ok or st["std"] <= 0:
            return f"term_stats/map_stats[{kind!r}] is {st!r}, not a finite mean and a positive std"
    for kind, st in (d.get("channel_stats") or {}).items():
        if not valid_stats(st, ("mean", "precision")):
            return f"channel_stats[{kind!r}] does not hold a finite mean and precision matrix"
    if "position_stats" in d and not valid_stats(d["position_stats"], ("mean", "std")):
        return "position_stats does not hold finite mean and std grids"
    return None


def term_stats(terms: dict[str, list[float]], kinds) -> dict[str, dict[str, float]]:
    """Mean and standard deviation (ddof 1) of each model's validation-normal term, for
    the models in ``kinds``; a std that is 0 or undefined (one image) is 1, so the
    standardised term is always defined."""
    out = {}
    for kind in kinds:
        v = np.asarray(terms[kind], dtype=np.float64)
        sd = float(v.std(ddof=1)) if v.size > 1 else 0.0
        out[kind] = {"mean": float(v.mean()), "std": sd if sd > 0 and math.isfinite(sd) else 1.0}
    return out


def read_threshold(model_dir: str | Path, alpha: float, scoring: dict | None = None) -> dict | None:
    """The cached calibration, or None when missing, stale, for another alpha or (when
    ``scoring`` is given) for other scoring options. A
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
    if any(k not in d for k in LATER_FIELDS) or d.get("rules") != RULES_VERSION:
        return None
    if d.get("signature") != model_signature(model_dir) or d.get("alpha") != alpha:
        return None
    # a record from before an option existed was made with that option's legacy value
    if scoring is not None and {**legacy_scoring(), **d.get("scoring", {})} != scoring:
        return None
    if scoring is not None and scoring.get("map_term") == "maha" and not isinstance(d.get("channel_stats"), dict):
        return None
    if scoring is not None and scoring.get("map_position") and "position_stats" not in d:
        return None
    if scoring is not None and scoring.get("image_score") == "map-excess" and "excess_level" not in d:
        return None
    if scoring is not None and scoring.get("image_score") == "component-excess" and not isinstance(
            d.get("component_levels"), dict):  # fmt: skip
        return None
    if scoring is not None and scoring.get("score_norm") in ("standard", "max") and not isinstance(
            d.get("term_stats"), dict):  # fmt: skip
        return None
    if scoring is not None and scoring.get("map_norm") == "standard" and "map_stats" not in d:
        # a one-model directory has no map to standardise against the other: no stats needed
        return d if len(d.get("signature", {})) < 2 else None
    return d


def write_threshold(model_dir: str | Path, record: dict) -> None:
    """Atomic write (temp file + rename) so concurrent readers never see half a file."""
    data = json.dumps(record, indent=2).encode()
    atomic_write_bytes(Path(model_dir) / THRESHOLD_JSON, lambda f: f.write(data))
