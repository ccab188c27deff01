"""Self-supervised encoder pre-training (SimCLR-style NT-Xent, from scratch on the
training normals): the loop behind ``igd-fast pretrain``.

Each step takes a batch of training images (global: the images at ``image_size``;
local: ``patches_per_image`` random ``patch_size`` crops of each), draws two augmented
views of every input (:func:`igd_fast.models.ssl.augment`), and minimises NT-Xent on a
projection head over the encoder's latent z (SGD with momentum). The head is dropped;
the file keeps the encoder (trunk + projection to Z) of each kind, its architecture,
the settings and the loss per epoch, written atomically after every epoch. The
validation normals are split off exactly as ``train`` splits them (same
``val_fraction`` / ``seed``), so the encoder never sees them.

Ctrl-C / SIGTERM (inside :func:`igd_fast.train.sigterm_as_interrupt`) stops with
:class:`igd_fast.train.TrainingInterrupted`; the file then holds every finished epoch.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from .. import _dist
from ..checkpoint import atomic_write_bytes
from ..data import IMAGENET_MEAN, IMAGENET_STD
from ..models import Encoder, ModelConfig
from ..models.ssl import SSL_FORMAT, AugmentConfig, ProjectionHead, augment, encoder_arch, nt_xent
from .loop import NonFiniteLossError, TrainingInterrupted, progress_bar, stop_requested, uninterrupted
from .setup import datasets


@dataclass
class PretrainOptions:
    """How to pre-train (the encoder's architecture comes from the :class:`ModelConfig`)."""

    epochs: int = 100
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-6
    temperature: float = 0.5
    batch_size: int = 32
    patches_per_image: int = 8  # local model: random crops per image and step
    workers: int = field(default_factory=_dist.default_workers)
    seed: int = 0
    val_fraction: float = 0.1
    device: str | None = None
    skip_corrupt: bool = False
    progress: bool = True
    preset: str | None = None
    preset_applied: dict | None = None

    def check(self) -> None:
        """ValueError naming the first option out of range."""
        for name, low in (("epochs", 0), ("batch_size", 1), ("patches_per_image", 1), ("workers", 0)):
            v = getattr(self, name)
            if not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
        for name in ("lr", "temperature"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {getattr(self, name)!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction!r}")


@dataclass
class PretrainResult:
    path: Path
    encoders: dict[str, Encoder]
    history: dict[str, list[dict]]


def _seed(seed: int, kind: str, epoch: int) -> int:
    """Every draw of an epoch (shuffle: this + 1; crops and views: this) from these alone."""
    return ((seed * 1_000_003 + epoch) * 7 + ("global", "local").index(kind)) * 2


def ssl_inputs(images: Tensor, cfg: ModelConfig, gen: torch.Generator, per_image: int) -> Tensor:
    """What one step contrasts: the images (global) or ``per_image`` crops of
    ``patch_size`` at uniformly random positions of each image (local)."""
    if cfg.kind == "global":
        return images
    n, _, h, w = images.shape
    s = cfg.patch_size
    ys = torch.randint(0, h - s + 1, (n, per_image), generator=gen).tolist()
    xs = torch.randint(0, w - s + 1, (n, per_image), generator=gen).tolist()
    crops = [images[i, :, y : y + s, x : x + s] for i in range(n) for y, x in zip(ys[i], xs[i])]
    return torch.stack(crops)


class _Job:
    """One kind's encoder, head, optimiser and history while it pre-trains."""

    def __init__(self, cfg: ModelConfig, opts: PretrainOptions, device: torch.device) -> None:
        self.cfg, self.opts, self.device = cfg, opts, device
        self.encoder = Encoder(cfg.latent, cfg.width, cfg.blocks, bias_free=cfg.method.bias_free).to(device)
        self.head = ProjectionHead(cfg.latent).to(device)
        params = list(self.encoder.parameters()) + list(self.head.parameters())
        self.opt = torch.optim.SGD(params, lr=opts.lr, momentum=opts.momentum, weight_decay=opts.weight_decay)
        self.history: list[dict] = []

    def step(self, x: Tensor, gen: torch.Generator) -> float:
        views = torch.cat([augment(x, gen, IMAGENET_MEAN, IMAGENET_STD), augment(x, gen, IMAGENET_MEAN, IMAGENET_STD)])
        p = self.head(self.encoder(views.to(self.device)))
        loss = nt_xent(p[: x.shape[0]], p[x.shape[0] :], self.opts.temperature)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return float(loss.detach())

    def entry(self) -> dict:
        """The file's record of this encoder (head dropped)."""
        weights = {k: v.detach().cpu() for k, v in self.encoder.state_dict().items()}
        return {"arch": encoder_arch(self.cfg), "state_dict": weights, "epochs_done": len(self.history),
                "epochs": self.opts.epochs, "history": list(self.history)}  # fmt: skip


class _Batches:
    """The shuffled training images, one loader for every epoch (persistent workers);
    the shuffle of epoch e depends on (seed, kind, e) alone."""

    def __init__(self, train_ds, opts: PretrainOptions, kind: str) -> None:
        self.order, self.opts, self.kind = torch.Generator(), opts, kind
        self.loader = DataLoader(train_ds, batch_size=min(opts.batch_size, len(train_ds)), shuffle=True,
                                 generator=self.order, num_workers=opts.workers,
                                 persistent_workers=opts.workers > 0)  # fmt: skip

    def epoch(self, e: int) -> DataLoader:
        self.order.manual_seed(_seed(self.opts.seed, self.kind, e) + 1)
        return self.loader

    def close(self) -> None:
        it = getattr(self.loader, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()


def _epoch(job: _Job, batches: _Batches, epoch: int) -> dict:
    opts, cfg = job.opts, job.cfg
    gen = torch.Generator().manual_seed(_seed(opts.seed, cfg.kind, epoch))
    job.encoder.train()
    job.head.train()
    losses, t0, n_in = [], time.perf_counter(), 0
    bar = progress_bar(batches.epoch(epoch), opts.progress, f"pretrain {cfg.kind} epoch {epoch + 1}/{opts.epochs}")
    for batch in bar:
        x = ssl_inputs(batch["image"].to(job.device), cfg, gen, opts.patches_per_image)
        if x.shape[0] < 2:  # a last batch of one image has no negatives
            continue
        loss = job.step(x, gen)
        if stop_requested():
            raise KeyboardInterrupt
        if not math.isfinite(loss):
            raise NonFiniteLossError(f"non-finite NT-Xent loss at {cfg.kind} epoch {epoch + 1}: {loss}")
        losses.append(loss)
        n_in += x.shape[0]
        if hasattr(bar, "set_postfix"):
            bar.set_postfix({"nt_xent": f"{loss:.4f}"})
    secs = time.perf_counter() - t0
    return {"epoch": epoch + 1, "steps": len(losses), "inputs": n_in, "seconds": round(secs, 4),
            "loss": sum(losses) / max(len(losses), 1)}  # fmt: skip


def _payload(entries: dict[str, dict], opts: PretrainOptions, record: dict) -> dict:
    settings = asdict(opts) | {"augment": AugmentConfig().to_dict(), "optimizer": "SGD", "loss": "nt_xent"}
    settings.pop("progress")
    return {"format": SSL_FORMAT, "encoders": dict(entries), "pretrain": settings, "run": record}


def _save(path: Path, entries: dict[str, dict], opts: PretrainOptions, record: dict) -> None:
    payload = _payload(entries, opts, record)
    with uninterrupted():
        atomic_write_bytes(path, lambda f: torch.save(payload, f))


def pretrain(cfgs: list[ModelConfig], data, category: str | None, out: str | Path,
             opts: PretrainOptions | None = None) -> PretrainResult:  # fmt: skip
    """Pre-train one encoder per config (global and/or local) on the training normals
    of ``data``/``category`` (or a resolved layout); writes ``out`` after every epoch."""
    opts = opts or PretrainOptions()
    opts.check()
    path, device = Path(out), _dist.resolve_device(opts.device)
    entries: dict[str, dict] = {}
    jobs: dict[str, _Job] = {}
    for cfg in cfgs:
        # seeded per kind: an encoder's initial weights depend on the seed alone
        random.seed(opts.seed)
        np.random.seed(opts.seed)
        torch.manual_seed(opts.seed)
        train_ds, _, record = datasets(cfg, data, category, opts)
        job = jobs[cfg.kind] = _Job(cfg, opts, device)
        batches = _Batches(train_ds, opts, cfg.kind)
        try:
            for epoch in range(opts.epochs):
                job.history.append(_epoch(job, batches, epoch))
                entries[cfg.kind] = job.entry()
                _save(path, entries, opts, _record(record))
                if stop_requested():  # arrived while saving: the file is complete
                    raise KeyboardInterrupt
            if opts.epochs == 0:
                entries[cfg.kind] = job.entry()
                _save(path, entries, opts, _record(record))
        except KeyboardInterrupt:
            # the epoch number names this kind's progress; None: no file written at all
            raise TrainingInterrupted(path, entries[cfg.kind]["epochs_done"] if cfg.kind in entries else None) from None
        finally:
            batches.close()
    return PretrainResult(path, {k: j.encoder.eval() for k, j in jobs.items()}, {k: j.history for k, j in jobs.items()})


def _record(record: dict) -> dict:
    """run.json-like facts of the data the encoder saw (the validation files it did not)."""
    return {k: record[k] for k in ("data_root", "category", "layout", "seed", "val_fraction", "val_files",
                                   "train_files")}  # fmt: skip
