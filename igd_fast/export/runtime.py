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

from ..score.scorer import BatchScores, Scorer
from ..score.threshold import DEFAULT_SCORING

RUNTIMES = ("onnxruntime", "openvino")


class ExportedScorer(Scorer):
    """A :class:`Scorer` whose ``score_batch`` is an exported file in a runtime."""

    def __init__(self, path: str | Path, runtime: str = "onnxruntime", batch_size: int = 16) -> None:
        # Scorer.__init__ loads checkpoints: none here, only what the streaming needs
        self.path = Path(path)
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
        if not self.path.is_file():
            raise FileNotFoundError(f"exported model {self.path} does not exist (write one with igd-fast export)")
        meta = self.path.with_suffix(".json")
        try:
            self.record = json.loads(meta.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read the export record {meta} (written beside the model by igd-fast export): {e}"
                             ) from None  # fmt: skip
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if runtime == "openvino":
            from .openvino import openvino_runner

            self._run = openvino_runner(self.path)
        else:
            from .onnx import onnxruntime_runner

            self._run = onnxruntime_runner(self.path)
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
