"""Calibration of a :class:`~igd_fast.score.scorer.Scorer` on the validation normals of its
model directory: the statistics the scoring options need (fitted in order, each with the
ones before it in place), then the threshold, the heat-map scale and the pixel threshold
(the rules are in :mod:`igd_fast.score.threshold`). The record is what threshold.json caches.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..checkpoint import validation_files
from .residual import ChannelAccumulator, PositionAccumulator, excess_level, map_excess
from .threshold import (
    NORMALISATION,
    PIXEL_RULE,
    conformal_threshold,
    model_signature,
    score_scale,
    term_stats,
)

if TYPE_CHECKING:
    from .scorer import Scorer


def calibrate(scorer: Scorer, num_workers: int = 0) -> dict:
    """The calibration record of ``scorer`` on its validation normals (not cached here)."""
    from .scorer import Failure

    files = validation_files(scorer.model_dir)
    if not files:
        raise ValueError(f"{scorer.model_dir}/run.json lists no validation images to calibrate on")
    s_g, s_l, paths, pixels, peaks, failed, own = [], [], [], [], [], [], []
    scorer._raw = True  # the combined score needs the term stats computed here
    scorer._fitting = {}
    try:
        fitted = fit_map_stats(scorer, files, num_workers)
        if scorer.image_score == "map-excess":
            scorer._fitting["excess_level"] = None  # fitted on this pass's maps, below
        for r in scorer.score_paths(files, num_workers, want_maps=True):
            if isinstance(r, Failure):
                failed.append({"path": r.path, "error": r.error})
                continue
            s_g.append(r.s_global)
            s_l.append(r.s_local)
            own.append(r.score)
            paths.append(r.path)
            if r.map is not None:
                pixels.append(r.map.reshape(-1))
                peaks.append(float(r.map.max()))
    finally:
        scorer._raw, scorer._fitting = False, None
    if not paths:
        raise ValueError(f"none of the {len(files)} validation images of {scorer.model_dir} could be read")
    stats = term_stats({"global": s_g, "local": s_l}, scorer.kinds)
    # no per-pixel map (Deep SVDD): a zero colour scale, never used for overlays
    px = np.concatenate(pixels) if pixels else np.zeros(1, np.float32)
    if scorer.image_score == "map-excess":
        # float32 maps, as score_paths gives them: a re-scored validation image gets the same score
        fitted["excess_level"] = excess_level(px, scorer.excess_quantile)
        scores = [map_excess(p, fitted["excess_level"]) for p in pixels]
    elif scorer.image_score == "map-max":
        scores = own
    else:
        # float32, as score_batch combines them: a re-scored validation image gets the same score
        f32 = torch.float32
        scores = scorer._combine(torch.tensor(s_g, dtype=f32), torch.tensor(s_l, dtype=f32), stats).tolist()
    threshold = conformal_threshold(scores, scorer.alpha)
    record = {
        "threshold": threshold,
        "rule": "split-conformal: k-th smallest validation score, k = min(n, ceil((n+1)(1-alpha))); "
        "anomalous when score > threshold",
        "alpha": scorer.alpha,
        "n_validation": len(scores),
        "validation_scores": dict(zip(paths, scores, strict=True)),
        "validation_failed": failed,
        "map_low": float(np.median(px)),
        "map_high": float(px.max()),
        "has_maps": bool(pixels),
        "score_scale": score_scale(scores, threshold),
        "normalisation": NORMALISATION,
        # no map (Deep SVDD): 0, never used (no pred_mask without a map)
        "pixel_threshold": conformal_threshold(peaks, scorer.alpha) if peaks else 0.0,
        "pixel_rule": PIXEL_RULE,
        "signature": model_signature(scorer.model_dir),
        "scoring": scorer._cache_key(),
        "term_stats": stats,
        # what recon_colour decided for the residual maps ("auto": damped for grey normals)
        "recon_colour_used": getattr(scorer, "recon_colour_used", "rgb"),
    }
    record.update(fitted)
    return record


def fit_map_stats(scorer: Scorer, files: Sequence[str | Path], num_workers: int) -> dict:
    """The map statistics the scoring options need, each fitted on ``files`` with the
    ones before it in place (into ``scorer._fitting``, which must be a dict)."""
    from .scorer import Failure

    f = scorer._fitting
    if scorer.map_term == "maha":
        f["channel_stats"] = channel_stats(scorer, files, num_workers)
    if scorer.map_norm == "standard" and len(scorer.kinds) == 2:
        # the pixel stats the combined maps of the later passes need
        f["map_stats"] = pixel_stats(scorer, files, num_workers)
    if scorer.map_position:
        f["position_stats"] = None  # maps of this pass are not standardised yet
        acc = PositionAccumulator()
        for r in scorer.score_paths(files, num_workers, want_maps=True):
            if not isinstance(r, Failure) and r.map is not None:
                acc.add(torch.from_numpy(r.map))
        f["position_stats"] = acc.finish()
    return dict(f)


@torch.inference_mode()
def pixel_stats(scorer: Scorer, paths: Sequence[str | Path], num_workers: int) -> dict:
    """Mean and std of each model's map over all pixels of ``paths`` (model resolution)."""
    acc = {"global": [0.0, 0.0, 0], "local": [0.0, 0.0, 0]}
    for batch in scorer.loader(paths, num_workers):
        if batch.images is None:
            continue
        x = batch.images.to(scorer.device, torch.float32)
        for kind, fn in (("global", scorer._global_terms), ("local", scorer._local_terms)):
            m = fn(x, True)[1]
            if m is None:  # no map (Deep SVDD): the other map is used as is
                continue
            m, a = m.double(), acc[kind]
            a[0], a[1], a[2] = a[0] + float(m.sum()), a[1] + float((m * m).sum()), a[2] + m.numel()
    out = {}
    for kind, (s1, s2, n) in acc.items():
        mean = s1 / max(n, 1)
        var = (s2 - n * mean * mean) / (n - 1) if n > 1 else 0.0
        sd = float(np.sqrt(var)) if var > 0 else 0.0
        out[kind] = {"mean": mean, "std": sd if sd > 0 and np.isfinite(sd) else 1.0}
    return out


@torch.inference_mode()
def channel_stats(scorer: Scorer, paths: Sequence[str | Path], num_workers: int) -> dict:
    """Each decoder model's residual channel Gaussian over the pixels of ``paths`` (the
    local model's residuals folded back into images, as they are measured)."""
    acc = {k: ChannelAccumulator() for k in scorer.kinds if scorer._model(k).config.method.recon}
    scorer._residual_maps = True
    try:
        for batch in scorer.loader(paths, num_workers):
            if batch.images is None:
                continue
            x = batch.images.to(scorer.device, torch.float32)
            for kind, a in acc.items():
                a.add(scorer._model_terms(kind, scorer._model(kind), x, True)[1])
    finally:
        scorer._residual_maps = False
    return {k: a.finish() for k, a in acc.items()}
