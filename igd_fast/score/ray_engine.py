"""Batch scoring on a Ray cluster with Ray Data: a dataset of image paths (or of the files'
bytes) through one :class:`~igd_fast.score.Scorer` per actor, CPU or GPU.

The calibration (``threshold.json``: the module's statistics and the decision) is fitted or
read once, on the driver, and handed to every actor; actors never calibrate. Each actor reads
its images as the local runner does, scores them, decides them with the same post-processor
and writes their per-image files (overlays, maps, masks, TIFFs) with
:mod:`igd_fast.score.image_outputs`, into an output folder that every node sees (shared
storage). What comes back to the driver is one small row per image (:data:`COLUMNS`), so
``igd-fast score --engine ray`` writes the same ``scores.csv`` / JSONL as the local engine.

>>> import ray
>>> from igd_fast.score.ray_engine import score_dataset
>>> ds = ray.data.read_binary_files("s3://bucket/images/", include_paths=True)  # or a list of paths
>>> rows = score_dataset(ds, "models/bottle", out="/shared/scored", workers=8).to_pandas()
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .image_outputs import CSV_COLUMNS, FILE_KEYS, ImageOutputs, report
from .io import ScoreDataset
from .postprocess import PostProcessor
from .recipe import Recipe

# one row per image: scores.csv's columns, the files written ("" when none) and "error"
# ("" when scored); "reported": whether the image has a row in scores.csv (a file that could
# not be written keeps its row and lists the error)
COLUMNS = ["index", *CSV_COLUMNS, *FILE_KEYS, "reported", "error"]


@dataclass(frozen=True)
class ScorerSpec:
    """What every actor builds its Scorer from: the model directory, the recipe (precision
    already decided), the calibration record fitted on the driver ({} when a threshold was
    given without one), the decision, and how to run (device, batch, threads)."""

    model_dir: str
    recipe: Recipe
    calibration: dict
    post: PostProcessor
    batch_size: int = 16
    backend: str | None = None
    device: str = "cpu"
    threads: int = 1
    compile: bool = False

    @classmethod
    def of(cls, scorer: Any, post: PostProcessor, calibration: dict, device: str = "cpu", threads: int = 1,
           backend: str | None = None) -> ScorerSpec:  # fmt: skip
        """The spec of a driver's Scorer: its recipe with ``precision: auto`` replaced by what
        the driver's guard decided (when every model got the same), so actors skip the guard."""
        recipe = scorer.recipe
        chosen = set(scorer.precision.values())
        if recipe["precision"] == "auto" and len(chosen) == 1:
            recipe = recipe.override({"precision": chosen.pop()})
        return cls(str(scorer.model_dir), recipe, dict(calibration), post, scorer.batch_size, backend, device,
                   threads, scorer.compiled)  # fmt: skip


class ScoreActor:
    """One Scorer on one actor; ``__call__`` scores a batch of rows holding ``path`` (and
    optionally ``bytes``, the file's content, and ``index``) into rows of :data:`COLUMNS`."""

    def __init__(self, spec: ScorerSpec, outputs: ImageOutputs) -> None:
        import torch

        from .scorer import Scorer

        torch.set_num_threads(max(1, spec.threads))
        self.scorer = Scorer(spec.model_dir, spec.device, recipe=spec.recipe, batch_size=spec.batch_size,
                             backend=spec.backend, compile=spec.compile)  # fmt: skip
        if spec.calibration:
            self.scorer.use_calibration(spec.calibration)
        self.post, self.outputs = spec.post, outputs

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if "path" not in batch:
            raise ValueError(f"a dataset to score needs a 'path' column (it has {', '.join(batch)})")
        paths = [str(p) for p in batch["path"]]
        index = [int(i) for i in batch["index"]] if "index" in batch else [-1] * len(paths)
        data = [bytes(b) for b in batch["bytes"]] if "bytes" in batch else None
        m = self.scorer.module
        read = ScoreDataset(paths, m.image_size, index, getattr(m, "keep_aspect", False), data)
        items = [read[i] for i in range(len(paths))]
        runner = self.scorer.runner
        cols: dict[str, list] = {c: [] for c in COLUMNS}
        # the runner gives one result per item, in input order
        for j, r in enumerate(runner.score_batches(runner.batches(items))):
            row, failure = report(r, self.post, self.outputs, None if data is None else data[j])
            _append(cols, r.index, r.path, row, failure)
        return _arrays(cols)


def _append(cols: dict[str, list], index: int, path: str, row: dict | None, failure: dict | None) -> None:
    nan = float("nan")
    got = row or {}
    cols["index"].append(index)
    cols["path"].append(path)
    for k in ("score", "pred_score", "s_global", "s_local"):
        cols[k].append(float(got.get(k, nan)))
    cols["pred_label"].append(int(got.get("pred_label", -1)))
    for k in FILE_KEYS:
        cols[k].append(str(got.get(k, "")))
    cols["reported"].append(row is not None)
    cols["error"].append("" if failure is None else failure["error"])


_DTYPES = {"index": np.int64, "pred_label": np.int64, "reported": np.bool_, "score": np.float64,
           "pred_score": np.float64, "s_global": np.float64, "s_local": np.float64}  # fmt: skip


def _arrays(cols: dict[str, list]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, dtype=_DTYPES.get(k, object)) for k, v in cols.items()}  # the rest: strings


def rows_of(batch: dict[str, np.ndarray]) -> tuple[list[dict], list[dict]]:
    """(rows of scores.csv / JSONL, failures) of a batch of :data:`COLUMNS`, as the local engine
    makes them (Python numbers, the file keys only where files were written)."""
    rows, failed = [], []
    for j in range(len(batch["index"])):
        index, path = int(batch["index"][j]), str(batch["path"][j])
        if batch["reported"][j]:
            row = {"index": index, "path": path, "score": float(batch["score"][j]),
                   "pred_score": float(batch["pred_score"][j]), "pred_label": int(batch["pred_label"][j]),
                   "s_global": float(batch["s_global"][j]), "s_local": float(batch["s_local"][j])}  # fmt: skip
            row.update({k: str(batch[k][j]) for k in FILE_KEYS if batch[k][j]})
            rows.append(row)
        if batch["error"][j]:
            failed.append({"index": index, "path": path, "error": str(batch["error"][j])})
    return rows, failed


def map_scorer(ds: Any, spec: ScorerSpec, outputs: ImageOutputs, workers: int, cpus_per_worker: float = 1.0,
               gpus_per_worker: float = 0.0) -> Any:  # fmt: skip
    """``ds`` (rows with ``path``, optionally ``bytes`` and ``index``) scored lazily by
    ``workers`` actors of one Scorer each: a Ray Dataset of :data:`COLUMNS`."""
    from ray.data import ActorPoolStrategy

    gpu = {"num_gpus": gpus_per_worker} if gpus_per_worker > 0 else {}
    return ds.map_batches(ScoreActor, fn_constructor_args=(spec, outputs), batch_size=spec.batch_size,
                          batch_format="numpy", compute=ActorPoolStrategy(size=workers), num_cpus=cpus_per_worker,
                          **gpu)  # fmt: skip


def score_dataset(data: Any, model_dir: str | Path, *, out: str | Path | None = None, base: str | Path | None = None,
                  overlays: bool = True, maps: bool = False, masks: bool = False, tiff: bool = False,
                  workers: int = 1, cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0,
                  batch_size: int = 16, threshold: float | None = None, **options: Any) -> Any:  # fmt: skip
    """Score ``data`` (a Ray Dataset with a ``path`` column, and ``bytes`` when the files
    were read already, e.g. ``ray.data.read_binary_files(..., include_paths=True)``; or a
    list of paths) with the model directory ``model_dir`` on the connected Ray cluster.

    Returns the lazy Ray Dataset of :data:`COLUMNS` (one row per image). With ``out`` the
    actors write each image's overlay (``overlays``), map, mask and TIFF there, named by its
    path below ``base`` (the driver's and every node's view of ``out`` must be the same
    folder). The calibration is read from (or fitted into) ``threshold.json`` here, before
    any actor starts. ``options``: scoring options of the recipe (``map_term="maha"``, ...);
    ``gpus_per_worker`` > 0 scores on the actors' GPUs.
    """
    import ray

    from .scorer import Scorer

    if not isinstance(data, ray.data.Dataset):
        data = ray.data.from_items([{"index": i, "path": str(p)} for i, p in enumerate(_paths(data))])
    scorer = Scorer(model_dir, "cpu", batch_size=batch_size, **options)
    calib = scorer.calibration()
    post = scorer.post_processor if threshold is None else scorer.post_processor.with_threshold(threshold)
    device = "cuda" if gpus_per_worker > 0 else "cpu"
    spec = ScorerSpec.of(scorer, post, calib, device, max(1, int(cpus_per_worker)))
    files = ImageOutputs(Path(out or "."), Path(base or "/").resolve(), overlays and out is not None,
                         maps and out is not None, masks and out is not None, tiff and out is not None)  # fmt: skip
    return map_scorer(data, spec, files, workers, cpus_per_worker, gpus_per_worker)


def _paths(data: Sequence[str | Path]) -> list[str]:
    if isinstance(data, (str, Path)):
        raise TypeError("give a Ray Dataset or a list of paths (for a folder: igd_fast.score.list_images(folder))")
    return [str(p) for p in data]
