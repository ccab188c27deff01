"""The runner: images from files, folders or memory, in batches, through a scoring model, one
result per image in input order (a :class:`ScoredImage`, or a :class:`Failure` for a file
that could not be read). It knows nothing of what the model computes; Ray workers and an
HTTP service would be other runners over the same model.

The model it drives (:class:`igd_fast.score.module.ScoringModule`, or an exported graph's
adapter) offers ``image_size``, ``map_scored``, ``raw(x, want_maps)`` (scores and maps at
the scoring size), ``finish_map(m, size)`` (a map at an image's own size) and
``image_score_of(maps)``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from .io import Batch, Item, ScoreDataset, collate
from .results import Failure, ScoredImage


class Runner:
    """Scores batches of ``batch_size`` images with ``model`` on ``device``; throughput
    (networks + kernels + map resizing, reading excluded) accumulates in
    :attr:`images_per_second`."""

    def __init__(self, model: Any, device: torch.device, batch_size: int = 16) -> None:
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.device = device
        self.batch_size = int(batch_size)
        self.images_seen = 0
        self.seconds = 0.0

    def loader(self, paths: Sequence[str | Path], num_workers: int = 0, indices: list[int] | None = None):
        """Batches of image files read at the model's size (unreadable ones kept apart)."""
        ds = ScoreDataset(list(paths), self.model.image_size, indices, getattr(self.model, "keep_aspect", False))
        return DataLoader(ds, batch_size=self.batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate,
                          pin_memory=self.device.type == "cuda", persistent_workers=False)  # fmt: skip

    def batches(self, items: Sequence[Item]) -> Iterator[Batch]:
        """In-memory items (already at the model's size) in batches."""
        for i in range(0, len(items), self.batch_size):
            yield collate(list(items[i : i + self.batch_size]))

    def score_paths(self, paths: Sequence[str | Path], num_workers: int = 0, want_maps: bool = True,
                    indices: list[int] | None = None, progress=None) -> Iterator[ScoredImage | Failure]:  # fmt: skip
        """Score image files in order, one result per file. ``indices`` labels them (e.g. their
        position in a list sharded across processes); ``progress``: a tqdm bar, advanced per file."""
        yield from self.score_batches(self.loader(paths, num_workers, indices), want_maps, progress)

    def score_batches(self, batches: Iterable[Batch], want_maps: bool = True,
                      progress=None) -> Iterator[ScoredImage | Failure]:  # fmt: skip
        for batch in batches:
            results: list[tuple[int, ScoredImage | Failure]] = [
                (it.pos, Failure(it.index, it.path, it.error or "unreadable")) for it in batch.failed
            ]
            for part in batch.by_size():
                results += self._score(part, want_maps)
            # a batch's failures and images come back in input order
            yield from (r for _, r in sorted(results, key=lambda t: t[0]))
            if progress is not None:
                progress.update(len(batch.items) + len(batch.failed))

    def to_device(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(self.device, torch.float32, non_blocking=True)

    @torch.inference_mode()
    def _score(self, batch: Batch, want_maps: bool) -> list[tuple[int, ScoredImage]]:
        t0 = time.perf_counter()
        model, items = self.model, batch.items
        out = model.raw(self.to_device(batch.images), want_maps or model.map_scored)
        maps = [None] * len(items)
        if out.maps is not None:
            maps = [model.finish_map(out.maps[j : j + 1], it.orig_size) for j, it in enumerate(items)]
        if model.map_scored:
            scores = [float(model.image_score_of(m)[0]) for m in maps]
        else:
            scores = out.score.double().cpu().tolist()
        arrays = [m[0, 0].float().cpu().numpy() if m is not None and want_maps else None for m in maps]
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds += time.perf_counter() - t0
        self.images_seen += len(items)
        terms = {k: v.double().cpu().tolist() for k, v in out.terms.items()}
        return [(it.pos, ScoredImage(it.index, it.path, scores[j], _term(terms, "global", j),
                                     _term(terms, "local", j), arrays[j], {k: v[j] for k, v in terms.items()}))
                for j, it in enumerate(items)]  # fmt: skip

    @property
    def images_per_second(self) -> float:
        return self.images_seen / self.seconds if self.seconds > 0 else 0.0


def _term(terms: dict[str, list[float]], kind: str, j: int) -> float:
    # a model directory without the component reports its term as 0 (scores.csv columns)
    return terms[kind][j] if kind in terms else 0.0
