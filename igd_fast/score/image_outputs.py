"""One scored image into what a scoring run reports: its row of ``scores.csv`` and its files
(overlay, raw map, mask, evaluator TIFF), each written atomically inside the output folder.

Every engine of ``igd-fast score`` (the local loop, torchrun ranks, Ray actors) turns its
results into rows and files here, so they write the same outputs.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..outputs import OutputError, OutputPathError, inside, save_image, save_npy
from .io import overlay, read_rgb, save_mask, save_tiff
from .postprocess import PostProcessor
from .results import Failure, Prediction, ScoredImage

# the columns of scores.csv; the rows also carry "index" and the files written
CSV_COLUMNS = ["path", "score", "pred_score", "pred_label", "s_global", "s_local"]
FILE_KEYS = ("anomaly_map", "pred_mask", "anomaly_map_tiff")


def output_name(path: Path, base: Path) -> str:
    """The input's path below ``base`` ('/'-separated, extension kept): sub/a.png stays
    sub/a.png, so outputs mirror the input tree and never collide."""
    try:
        rel = path.resolve().relative_to(base)
    except ValueError:
        rel = Path(*path.resolve().parts[1:])
    return rel.as_posix()


def tiff_name(path: Path) -> str | None:
    """'<category>/test/<defect>/<id>.tiff' for an image at .../<category>/test/<defect>/<id>.<ext>
    (the nearest 'test' folder above it), else None."""
    parts = Path(os.path.abspath(path)).parts
    for i in range(len(parts) - 3, 1, -1):
        if parts[i] == "test":
            return Path(*parts[i - 1 : -1], Path(parts[-1]).stem + ".tiff").as_posix()
    return None


def not_finite(r: ScoredImage) -> str | None:
    """Why a scored image's result cannot be reported (a NaN/inf score or map), or None."""
    if not math.isfinite(r.score):
        return f"the score is {r.score} (not a number): the model's output for this image is not finite"
    if r.map is not None and not np.isfinite(r.map).all():
        return "the anomaly map holds NaN/inf values: the model's output for this image is not finite"
    return None


def decide(r: ScoredImage, post: PostProcessor) -> tuple[dict, Prediction] | str:
    """(the image's row, its prediction), or why it cannot be reported (NaN is never
    "normal": an error for this image, never label 0)."""
    why = not_finite(r)
    if why is not None:
        return why
    p = post.predict(r)
    row = {"index": r.index, "path": r.path, "score": r.score, "pred_score": p.pred_score,
           "pred_label": p.pred_label, "s_global": r.s_global, "s_local": r.s_local}  # fmt: skip
    return row, p


@dataclass(frozen=True)
class ImageOutputs:
    """Which per-image files a run writes into ``out``, under names relative to ``base``."""

    out: Path
    base: Path
    overlays: bool = True
    maps: bool = False
    masks: bool = False
    tiff: bool = False

    def _file(self, sub: str, name: str, suffix: str) -> Path:
        return inside(self.out, sub, f"{name}{suffix}")

    def write(self, row: dict, p: Prediction, vrange: tuple[float, float] | None, data: bytes | None = None) -> None:
        """One image's overlay, map, mask and TIFF, as asked for (each written atomically, each
        path checked to stay inside ``out``); their files go into ``row``. ``data``: the file's
        bytes when the image was scored from them."""
        amap, name = p.anomaly_map, output_name(Path(p.path), self.base)
        if self.overlays:
            # a threshold given by hand and no calibration: a per-image colour scale
            lo, hi = (float(amap.min()), float(amap.max())) if vrange is None else vrange
            save_image(self._file("overlays", name, ".png"), overlay(read_rgb(p.path, data), amap, lo, hi), "PNG")
        if self.maps:
            row["anomaly_map"] = str(self._file("maps", name, ".npy"))
            save_npy(row["anomaly_map"], amap.astype(np.float32))
        if self.masks:
            row["pred_mask"] = str(self._file("masks", name, ".png"))
            save_mask(row["pred_mask"], p.pred_mask)
        if self.tiff:
            row["anomaly_map_tiff"] = str(inside(self.out, tiff_name(Path(p.path))))
            save_tiff(row["anomaly_map_tiff"], amap)


def report(r: ScoredImage | Failure, post: PostProcessor, outputs: ImageOutputs,
           data: bytes | None = None,
           seen: Callable[[Prediction], None] | None = None) -> tuple[dict | None, dict | None]:  # fmt: skip
    """(the row of ``scores.csv``, or None; the failure to list, or None) of one result, its
    files written. A file that cannot be written keeps the row and lists the failure; a
    full disk raises (every later write would fail too). ``data``: the file's bytes when the
    image was scored from them; ``seen``: called with each reported image's prediction."""
    if isinstance(r, Failure):
        return None, {"index": r.index, "path": r.path, "error": r.error}
    got = decide(r, post)
    if isinstance(got, str):
        return None, {"index": r.index, "path": r.path, "error": got}
    row, p = got
    if seen is not None:
        seen(p)
    if r.map is None:  # a variant without a per-pixel map (Deep SVDD): the score only
        return row, None
    try:
        outputs.write(row, p, post.map_range, data)
    except (OSError, OutputPathError) as e:
        if isinstance(e, OutputError) and e.fatal:
            raise
        return row, {"index": r.index, "path": r.path, "error": f"writing outputs: {e}"}
    return row, None
