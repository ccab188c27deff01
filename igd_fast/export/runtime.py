"""Scoring with an exported file (``igd-fast score --runtime onnxruntime|openvino``).

:class:`ExportedScorer` runs the ``.onnx`` / ``.xml`` written by ``igd-fast export``
through the same reading, streaming and output code as the :class:`Scorer` (it is
one, with the networks and kernels replaced by the runtime): images are read and
resized by the package, the exported graph does normalised-image -> score and map,
and the threshold, score scale and colour scale come from the export's ``.json``
record. The exported graph returns the total score only, so ``s_global`` / ``s_local``
are NaN in its results.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..data.files import regular_file
from ..score.scorer import BatchScores, Scorer
from ..score.threshold import DEFAULT_SCORING

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


class ExportedScorer(Scorer):
    """A :class:`Scorer` whose ``score_batch`` is an exported file in a runtime."""

    def __init__(self, path: str | Path, runtime: str = "onnxruntime", batch_size: int = 16) -> None:
        # Scorer.__init__ loads checkpoints: none here, only what the streaming needs
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
        try:
            if runtime == "openvino":
                from .openvino import openvino_runner

                self._run = openvino_runner(self.path)
            else:
                from .onnx import onnxruntime_runner

                self._run = onnxruntime_runner(self.path)
        except Exception as e:  # noqa: BLE001 - each runtime has its own error types (protobuf, ...)
            first = (str(e).strip().splitlines() or [type(e).__name__])[-1][:300]
            raise ValueError(f"{runtime} cannot load {self.path}: truncated, corrupt or not an exported model "
                             f"({first}); export it again") from None  # fmt: skip
        self.model_dir = self.path.parent
        self.runtime = runtime
        self.device = torch.device("cpu")
        self.batch_size = int(batch_size)
        self.image_size = int(self.record["input"]["shape"][-1])
        self.backend = None
        self.images_seen, self.seconds = 0, 0.0
        self._calibration = self.record
        # the exported graph is the paper's score and map: the default scoring options
        for k, v in DEFAULT_SCORING.items():
            setattr(self, k, v)

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.record.get("models", ()))

    def calibration(self, num_workers: int = 0, recompute: bool = False) -> dict:
        """The calibration the export carries (it cannot be recomputed from the file)."""
        return self.record

    @torch.inference_mode()
    def score_batch(self, images: Tensor, want_maps: bool = True) -> BatchScores:
        out = self._run(images.float().contiguous().numpy())
        score = torch.from_numpy(np.asarray(out["score"], dtype=np.float32))
        nan = torch.full_like(score, math.nan)
        amap = out.get("anomaly_map")
        maps = torch.from_numpy(np.asarray(amap, dtype=np.float32)) if (want_maps and amap is not None) else None
        return BatchScores(score, nan, nan, maps)
