"""The bf16 guard of ``precision="auto"``: bf16 networks are kept only when they change none
of the decisions a user acts on.

After the fp32 calibration (thresholds and statistics, :mod:`igd_fast.score.calibrate`), the
validation normals and the synthetic defects the calibrator drew on them (the same seeded set,
:mod:`igd_fast.score.synthetic`) are scored by the fp32 and the bf16 module, both with the
fp32 calibration. bf16 passes when

  (a) image decisions: no image's label (score > threshold) differs, normals or defects;
  (b) image scores: max |score_bf16 - score_fp32| over the normals <= ``max_score_err`` (10 %)
      of the standard deviation of the normals' fp32 scores. The std is the scale the image
      rule itself works in (threshold = mean + z std at most), and the rule's own sampling
      error with n normals is about std sqrt((1 + z^2 / 2) / n), 0.34 std for n = 20: a tenth of
      a std is well inside what calibrating on another draw of normals would move;
  (c) pixel decisions: at most ``max_pixel_flips`` (0.1 %) of all pixels (normals and defects,
      each at its own size) change pred_mask (map > pixel_threshold): set when the pixel rule let
      pred_mask flag 1 % of normal pixels, it is now 10x the rule's 0.01 %, so the flips it bounds
      are mostly at the synthetic defects' edges; and at most ``map_err_share`` (0.1 %) of
      pixels differ by more than ``max_map_err`` (10 %) of the pixel decision's margin
      (pixel_threshold - the median normal pixel): the 99.9th percentile of the map error.
      The largest map error is recorded but not checked: a few ill-conditioned pixels where
      relu(cs)^w is steep reach a third of the map range and flip nothing.

bf16 is then used with the fp32 calibration (the thresholds the guard checked against). The
measurements, the tolerances and the device they were made on are kept with the calibration
(``threshold.json``: ``precision_guard``) and reused while all three match.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .module import ScoringModule
from .precision import cpu_bf16_flags
from .runner import Runner
from .synthetic import SEED as SYNTHETIC_SEED
from .synthetic import per_image, synthetic_defects

# the version of the checks above: a cached verdict of other checks is measured again
GUARD_VERSION = 1
RULE = ("bf16 kept when, scoring the validation normals and the calibration's synthetic defects with the fp32 "
        "calibration: no image label flips; max |delta score| of the normals <= max_score_err x std of their fp32 "
        "scores; <= max_pixel_flips of the pixels flip pred_mask; <= map_err_share of the pixels differ by more "
        "than max_map_err x (pixel_threshold - median normal pixel)")  # fmt: skip


@dataclass(frozen=True)
class PrecisionGuard:
    """The tolerances of the checks (module doc); ``Scorer(guard=...)`` overrides them."""

    max_image_flips: int = 0
    max_score_err: float = 0.10
    max_pixel_flips: float = 1e-3
    max_map_err: float = 0.10
    map_err_share: float = 1e-3

    def record(self) -> dict:
        return {**asdict(self), "version": GUARD_VERSION, "rule": RULE}


def device_name(device: torch.device) -> str:
    """What bf16 results depend on: the device (CPU: its bf16 flags) and the torch version."""
    if device.type == "cuda":
        what = torch.cuda.get_device_name(device)
    else:
        what = f"{device.type} ({' '.join(cpu_bf16_flags()) or 'no bf16 flags'})"
    return f"{what}, torch {torch.__version__}"


def cached_verdict(record: dict, guard: PrecisionGuard, device: torch.device) -> dict | None:
    """The calibration record's guard verdict when it was made with these tolerances on this device."""
    pg = record.get("precision_guard")
    if not isinstance(pg, dict) or pg.get("tolerances") != guard.record() or pg.get("device") != device_name(device):
        return None
    return pg if isinstance(pg.get("values"), dict) and isinstance(pg.get("passed"), bool) else None


@dataclass
class Tally:
    """The two precisions' outputs, accumulated batch by batch (maps are counted, not kept)."""

    threshold: float
    pixel_threshold: float
    margin: float  # the pixel decision's margin: pixel_threshold - the median normal pixel
    map_tol: float
    scores: dict = field(default_factory=lambda: {"normal": ([], []), "synthetic": ([], [])})
    pixels: int = 0
    pixel_flips: int = 0
    map_far: int = 0
    map_max: float = 0.0

    def add(self, kind: str, s32: Sequence[float], s16: Sequence[float], maps32: list[Tensor] | None,
            maps16: list[Tensor] | None) -> None:  # fmt: skip
        self.scores[kind][0].extend(s32)
        self.scores[kind][1].extend(s16)
        for a, b in zip(maps32 or [], maps16 or [], strict=True):
            d = torch.nan_to_num((b.double() - a.double()).abs(), nan=math.inf)
            self.pixels += a.numel()
            self.pixel_flips += int(((a > self.pixel_threshold) != (b > self.pixel_threshold)).sum())
            self.map_far += int((d > self.map_tol * self.margin).sum())
            self.map_max = max(self.map_max, float(d.max()))

    def values(self, guard: PrecisionGuard) -> dict:
        (n32, n16), (y32, y16) = (tuple(np.asarray(v, np.float64) for v in self.scores[k])
                                  for k in ("normal", "synthetic"))  # fmt: skip
        spread = float(n32.std(ddof=1)) if n32.size > 1 else 0.0
        out = {"n_normal": int(n32.size), "n_synthetic": int(y32.size),
               "image_flips": _flips(n32, n16, self.threshold) + _flips(y32, y16, self.threshold),
               "normal_score_std": spread, "score_err": _ratio(_max_abs(n16 - n32), spread),
               "synthetic_score_err": _ratio(_max_abs(y16 - y32), spread), "pixels": self.pixels,
               "pixel_flips": self.pixel_flips / self.pixels if self.pixels else None,
               "map_err_share": self.map_far / self.pixels if self.pixels else None,
               "max_map_err": _ratio(self.map_max, self.margin) if self.pixels else None}  # fmt: skip
        checks = {"image_flips": out["image_flips"] <= guard.max_image_flips,
                  "score_err": _le(out["score_err"], guard.max_score_err)}  # fmt: skip
        if self.pixels:
            checks["pixel_flips"] = out["pixel_flips"] <= guard.max_pixel_flips
            checks["map_err_share"] = out["map_err_share"] <= guard.map_err_share
        return {**out, "checks": checks, "passed": all(checks.values())}


def _flips(a: np.ndarray, b: np.ndarray, t: float) -> int:
    return int(((~(a <= t)) != (~(b <= t))).sum())  # NaN is anomalous, as pred_label has it


def _max_abs(d: np.ndarray) -> float:
    return float(np.nan_to_num(np.abs(d), nan=math.inf).max()) if d.size else 0.0


def _ratio(num: float, den: float) -> float | None:
    """num / den; None (undefined: fails its check) where that is not finite."""
    if den > 0 and math.isfinite(num / den):
        return num / den
    return 0.0 if num == 0 else None


def _le(v: float | None, tol: float) -> bool:
    return v is not None and v <= tol


@torch.inference_mode()
def measure(fp32: ScoringModule, bf16: ScoringModule, runner: Runner, files: Sequence[str | Path], calib: dict,
            guard: PrecisionGuard) -> dict:  # fmt: skip
    """The guard's measurements and verdict of ``bf16`` against ``fp32`` (both holding the
    statistics of ``calib``, the fp32 calibration record of ``files``)."""
    margin = float(calib["pixel_threshold"]) - float(calib["map_low"])
    if not margin > 0:  # a degenerate pixel threshold: the normals' map range instead
        margin = max(float(calib["map_high"]) - float(calib["map_low"]), 1e-12)
    tally = Tally(float(calib["threshold"]), float(calib["pixel_threshold"]), margin, guard.max_map_err)
    # the calibrator's synthetic set: same seed, same count per image, same batches in the same order
    gen = torch.Generator().manual_seed(SYNTHETIC_SEED)
    k, bs = per_image(int(calib["n_validation"])), runner.batch_size
    for batch in runner.loader(files):
        for part in batch.by_size():
            x, sizes = runner.to_device(part.images), [it.orig_size for it in part.items]
            tally.add("normal", *_both(fp32, bf16, x, sizes))
            xd, _ = synthetic_defects(x, k, gen)
            syn_sizes = [s for s in sizes for _ in range(k)]  # image i's defects at i·k .. i·k + k - 1
            for i in range(0, len(xd), bs):
                tally.add("synthetic", *_both(fp32, bf16, xd[i : i + bs], syn_sizes[i : i + bs]))
    if not tally.scores["normal"][0]:
        raise ValueError("none of the validation images could be read for the precision guard")
    return tally.values(guard)


def _both(fp32: ScoringModule, bf16: ScoringModule, x: Tensor, sizes: list) -> tuple:
    (s32, m32), (s16, m16) = _finished(fp32, x, sizes), _finished(bf16, x, sizes)
    return s32, s16, m32, m16


def _finished(m: ScoringModule, x: Tensor, sizes: list) -> tuple[list[float], list[Tensor] | None]:
    """Image scores and finished maps at each image's own size, as the runner makes them."""
    raw = m.raw(x, True)
    if raw.maps is None:
        return raw.score.double().cpu().tolist(), None
    maps = [m.finish_map(raw.maps[j : j + 1], sizes[j]).float().cpu() for j in range(x.shape[0])]
    if m.map_scored:
        return [float(m.image_score_of(a)[0]) for a in maps], maps
    return raw.score.double().cpu().tolist(), maps
