"""Scoring with an exported file (``igd-fast score --runtime onnxruntime|openvino``).

:class:`ExportedScorer` runs the ``.onnx`` / ``.xml`` written by ``igd-fast export``
through the same runner as the :class:`~igd_fast.score.Scorer` (reading, batching, output
order), with the exported graph as its model: images are read at their own size (batches
hold one size each), the graph does the resize, the scoring and the map at the image's size
(:mod:`.pipeline`), and the decision comes from the export's ``.json`` record (its
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
from torch import Tensor

from ..data import imagenet_pixels
from ..data.files import regular_file
from ..score.module import BatchScores
from ..score.recipe import Recipe
from ..score.runner import Runner
from ..score.scorer import BaseScorer
from .onnx import record_path

RUNTIMES = ("onnxruntime", "openvino")


def record_problem(rec: object) -> str | None:
    """Why an export's ``.json`` record cannot drive scoring, or None."""
    if not isinstance(rec, dict):
        return f"it holds a JSON {type(rec).__name__}, not an object"
    if rec.get("contract") != "raw-images":
        return "it was written by an older igd-fast (a graph of resized, normalised images)"
    if not (isinstance(rec.get("scoring_size"), int) and rec["scoring_size"] >= 1):
        return "no 'scoring_size'"
    for k in ("threshold", "score_scale", "pixel_threshold", "map_low", "map_high"):
        v = rec.get(k)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return f"field {k!r} is {v!r}, not a finite number"
    if rec["score_scale"] <= 0:
        return f"field 'score_scale' is {rec['score_scale']}, not > 0"
    return None


class ExportedModel:
    """A runner's model over an exported graph (``run``: N×3×H×W float32 in [0, 1] ->
    outputs, maps at H×W). The runner reads images at their own size (``image_size`` None)
    and ImageNet-normalised; they are taken back to [0, 1] here (the graph rounds them to the
    8-bit values they were read from)."""

    map_scored = False  # the graph's score is already the recipe's image score
    image_size = None  # read at each image's own size: the graph resizes

    def __init__(self, run: Callable[[np.ndarray], dict]) -> None:
        self.run = run

    def raw(self, x: Tensor, want_maps: bool = True) -> BatchScores:
        out = self.run(imagenet_pixels(x).contiguous().cpu().numpy())
        score = torch.from_numpy(np.asarray(out["score"], dtype=np.float32))
        nan = torch.full_like(score, math.nan)
        amap = out.get("anomaly_map_raw")
        maps = torch.from_numpy(np.asarray(amap, dtype=np.float32)) if (want_maps and amap is not None) else None
        return BatchScores(score, {"global": nan, "local": nan}, maps)

    def finish_map(self, m: Tensor, size: tuple[int, int]) -> Tensor:
        return m  # already at the image's size


class ExportedScorer(BaseScorer):
    """A scorer whose model is an exported file in a runtime (its calibration travels with it)."""

    def __init__(self, path: str | Path, runtime: str = "onnxruntime", batch_size: int = 16) -> None:
        self.path = Path(path)
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
        if not self.path.exists():
            raise FileNotFoundError(f"exported model {self.path} does not exist (write one with igd-fast export)")
        regular_file(self.path, "exported model")
        meta = record_path(self.path)
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
        self.runner = Runner(ExportedModel(self._runner()), self.device, batch_size)
        self.use_calibration(self.record)

    def _runner(self) -> Callable[[np.ndarray], dict]:
        try:
            if self.runtime == "openvino":
                from .openvino import openvino_runner

                return openvino_runner(self.path)
            from .onnx import onnxruntime_runner

            return onnxruntime_runner(self.path, ("score", "anomaly_map_raw"))
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
