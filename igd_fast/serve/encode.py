"""A :class:`igd_fast.score.Prediction` as the JSON a predict request gets back; the
anomaly map and the pred_mask, when asked for, as base64 PNGs at the image's own size."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from ..score import Prediction
from ..score.io import mask_pixels, normalise_map

MAP_LEVELS = 65535  # the map as a 16-bit grey PNG


def png_base64(pixels: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def map_png(amap: np.ndarray, vmin: float, vmax: float) -> str:
    """The map on the calibrated heat-map scale (``vmin`` -> 0, ``vmax`` -> 65535, clipped),
    so that maps of different images compare; value = vmin + level / 65535 · (vmax − vmin)."""
    levels = np.clip(normalise_map(amap.astype(np.float64), vmin, vmax), 0.0, 1.0) * MAP_LEVELS
    return png_base64(np.rint(levels).astype(np.uint16))


def prediction_json(p: Prediction, map_range: tuple[float, float] | None, want_map: bool, want_mask: bool) -> dict:
    """pred_score, pred_label, the raw score and each component's term; ``anomaly_map`` /
    ``pred_mask`` (base64 PNG) when asked for and the model has them (else null)."""
    out = {"pred_score": p.pred_score, "pred_label": p.pred_label, "score": p.score,
           "s_global": p.s_global, "s_local": p.s_local}  # fmt: skip
    if p.anomaly_map is not None:
        out["height"], out["width"] = (int(v) for v in p.anomaly_map.shape)
    if want_map:
        ok = p.anomaly_map is not None and map_range is not None
        out["anomaly_map"] = map_png(p.anomaly_map, *map_range) if ok else None
        out["map_range"] = list(map_range) if ok else None
    if want_mask:
        out["pred_mask"] = png_base64(mask_pixels(p.pred_mask)) if p.pred_mask is not None else None
    return out
