"""Scoring with an exported file (``igd-fast score --runtime onnxruntime|openvino``).

:class:`ExportedScorer` runs the ``.onnx`` / ``.xml`` written by ``igd-fast export``
through the same runner as the :class:`~igd_fast.score.Scorer` (reading, batching, output
order), with the exported graph as its model: images are read and resized by the package,
the graph does normalised image -> score and map at the model size, the map is resized to
each image's size, and the decision comes from the export's ``.json`` record (its
post-processor and recipe). The graph returns the total score only, so ``s_global`` /
``s_local`` are NaN in its results.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.files import regular_file
from ..score.module import BatchScores
from ..score.recipe import Recipe
from ..score.runner import Runner
from ..score.scorer import BaseScorer

RUNTIMES = ("onnxruntime", "openvino")


def record_problem(rec: object) -> str | None:
    """Why an export's ``.json`` record cannot drive scoring, or None."""
    if not isinstance(rec, dict):
        return f"it holds a JSON {type(rec).__name__}, not an object"
    shape = rec.get("input", {}).get("shape") if isinstance(rec.get("input"), dict) else None
    if not (isinstance(shape, list) and shape and isinstance(shape[-1], int) and shape[-1] >= 1):
        return "no 'input' record with the model's input shape"
    for k in ("threshold", "score_scale", "pixel_threshold", "map_low", "map_high"):
        v = rec.get(k)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return f"field {k!r} is {v!r}, not a finite number"
    if rec["score_scale"] <= 0:
        return f"field 'score_scale' is {rec['score_scale']}, not > 0"
    return None


class ExportedModel:
    """A runner's model over an exported graph (``run``: N×3×S×S float32 -> outputs)."""

    map_scored = False  # the graph's score is already the recipe's image score

    def __init__(self, run: Callable[[np.ndarray], dict], image_size: int) -> None:
        self.run, self.image_size = run, image_size

    def raw(self, x: Tensor, want_maps: bool = True) -> BatchScores:
        out = self.run(x.float().contiguous().cpu().numpy())
        score = torch.from_numpy(np.asarray(out["score"], dtype=np.float32))
        nan = torch.full_like(score, math.nan)
        amap = out.get("anomaly_map")
        maps = torch.from_numpy(np.asarray(amap, dtype=np.float32)) if (want_maps and amap is not None) else None
        return BatchScores(score, {"global": nan, "local": nan}, maps)

    def finish_map(self, m: Tensor, size: tuple[int, int]) -> Tensor:
        if tuple(m.shape[-2:]) == tuple(size):
            return m
        return F.interpolate(m, size=tuple(size), mode="bilinear", align_corners=False)


class ExportedScorer(BaseScorer):
    """A scorer whose model is an exported file in a runtime (its calibration travels with it)."""

    def __init__(self, path: str | Path, runtime: str = "onnxruntime", batch_size: int = 16) -> None:
        self.path = Path(path)
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
        if not self.path.exists():
            raise FileNotFoundError(f"exported model {self.path} does not exist (write one with igd-fast export)")
        regular_file(self.path, "exported model")
        meta = self.path.with_suffix(".json")
        try:
            regular_file(meta, "export record")
            self.record = json.loads(meta.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read the export record {meta} (written beside the model by igd-fast export): {e}"
                             ) from None  # fmt: skip
        why = record_problem(self.record)
        if why is not None:
            raise ValueError(f"the export record {meta} is damaged: {why}; export the model again")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_dir = self.path.parent
        self.runtime = runtime
        self.device = torch.device("cpu")
        self.compiled = False
        self.precision_record = {"requested": "fp32", "runtime": runtime}
        # an export from before recipes were recorded computed the default score and map
        self.recipe = Recipe.from_record(self.record.get("recipe", {}))
        image_size = int(self.record["input"]["shape"][-1])
        self.runner = Runner(ExportedModel(self._runner(), image_size), self.device, batch_size)
        self.use_calibration(self.record)

    def _runner(self) -> Callable[[np.ndarray], dict]:
        try:
            if self.runtime == "openvino":
                from .openvino import openvino_runner

                return openvino_runner(self.path)
            from .onnx import onnxruntime_runner

            return onnxruntime_runner(self.path)
        except Exception as e:  # noqa: BLE001 - each runtime has its own error types (protobuf, ...)
            first = (str(e).strip().splitlines() or [type(e).__name__])[-1][:300]
            raise ValueError(f"{self.runtime} cannot load {self.path}: truncated, corrupt or not an exported model "
                             f"({first}); export it again") from None  # fmt: skip

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.record.get("models", ()))

    @property
    def needs_calibration(self) -> bool:
        return False

    def calibration(self, num_workers: int = 0, recompute: bool = False) -> dict:
        """The calibration the export carries (it cannot be recomputed from the file)."""
        return self.record

    @torch.inference_mode()
    def score_batch(self, images: Tensor, want_maps: bool = True) -> BatchScores:
        return self.runner.model.raw(images, want_maps)
