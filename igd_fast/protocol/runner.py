"""Run a one-class protocol: per class, materialise the split, train one global model
through :func:`igd_fast.train.train`, score the test split and record the image AUROC.

Output folder::

    results.json, results.md        per-class image_AUROC, the mean, settings, seconds
    <class>/data/<category>/...     the materialised MVTec-layout split (+ split.json)
    <class>/model/                  global.pt, run.json, global_log.csv
    <class>/scores.csv              path, defect, label, score of every test image

Classes run one after another, or ``jobs`` at a time, each in its own process with
``cpu_count // jobs`` threads (the parent alone writes results.json). The small MNIST
model does not keep two threads busy: on 2 cores two 1-thread jobs train about twice as
many classes per hour as one 2-thread job (docs/results/mnist.md).

results.json is rewritten after every class; a rerun with the same settings (any class
list) skips the classes it already holds (resume), a rerun with other settings is refused.
The mean covers the classes of the current command (``settings.classes``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..config import LOCAL
from ..data import list_test_samples, list_train_files
from ..data.mnist import load_mnist
from ..metrics import auroc
from ..models import ModelConfig
from ..models.variants import VARIANTS as _MODEL_VARIANTS
from ..outputs import write_text
from ..train import TrainOptions, train
from .materialise import materialise_mnist, materialise_mvtec
from .scoring import score_test_split
from .splits import check_fractions, mnist_split, mvtec_split

VARIANTS = tuple(_MODEL_VARIANTS)

# Per-dataset model defaults. MNIST: a CPU-friendly recipe at 32×32 (28² digits resized)
# with the LOCAL MS-SSIM config (3×3 window, 4 scales, needs >= 17 px; the GLOBAL 11×11
# 5-scale one needs 161). MVTec: the paper's global model.
DATASET_DEFAULTS: dict[str, dict] = {
    "mnist": {
        "image_size": 32,
        "width": 16,
        "blocks": (1, 1, 1, 1),
        # chosen on the development split (--dev, classes 0, 3, 8; docs/results/mnist.md):
        # latent 32, batch 16 and 60 epochs gave l_r + l_h 0.923 against 0.845 for the
        # session-4 recipe (latent 128, batch 32, 12 epochs, sigma2 unfloored); 150 epochs
        # then 0.953 (~200 s a class on 2 cores, ten classes ~35-44 min); session 8: lr 3e-4
        # with the cosine schedule 0.963 (cosine at 1e-4: 0.942); on the test pools 0.9713
        "latent": 32,
        "epochs": 150,
        "lr": 3e-4,
        "lr_schedule": "cosine",
        "batch_size": 16,
        "estep_every": 5,
        "sigma2_floor": 1.0,  # the published code's floor: sigma2 fell to 0.07-0.6 without it
        "win_size": LOCAL.win_size,
        "weights": LOCAL.weights,
    },
    "mvtec": {
        "image_size": 256,
        "width": 64,
        "blocks": (2, 2, 2, 2),
        "latent": 128,
        "epochs": 256,
        "lr": 1e-4,
        "lr_schedule": "constant",
        "batch_size": 16,
        "estep_every": 10,
        "sigma2_floor": 0.0,
        "win_size": None,
        "weights": None,
    },
}


@dataclass
class ProtocolSettings:
    """Everything that determines a protocol run's results (recorded in results.json)."""

    dataset: str  # "mnist" | "mvtec"
    data: str
    classes: list[str]  # MNIST digits as strings, or MVTec categories
    variant: str = "igd"
    train_fraction: float = 1.0
    contamination: float = 0.0
    seed: int = 0
    epochs: int = 256
    batch_size: int = 64
    image_size: int = 256
    width: int = 64
    blocks: tuple[int, ...] = (2, 2, 2, 2)
    latent: int = 128
    win_size: int | None = None
    weights: tuple[float, ...] | None = None
    lr: float = 1e-4
    lr_schedule: str = "constant"
    estep_every: int = 10
    sigma2_floor: float = 0.0
    latent_weight: float = 1.0  # score = l_r + latent_weight * latent term (Scorer option)
    dev: bool = False  # mnist: the development split (splits.class_pools), for tuning

    @classmethod
    def for_dataset(cls, dataset: str, data: str, classes: list[str], **kw) -> ProtocolSettings:
        """Settings with ``dataset``'s defaults (:data:`DATASET_DEFAULTS`); ``kw`` entries
        that are None keep the default."""
        if dataset not in DATASET_DEFAULTS:
            raise ValueError(f"dataset must be mnist or mvtec, got {dataset!r}")
        given = {k: v for k, v in kw.items() if v is not None}
        return cls(dataset, str(Path(data).resolve()), list(classes), **{**DATASET_DEFAULTS[dataset], **given})

    def to_dict(self) -> dict:
        d = asdict(self)
        d["blocks"] = list(self.blocks)
        d["weights"] = None if self.weights is None else list(self.weights)
        return d


def model_config(s: ProtocolSettings) -> ModelConfig:
    return ModelConfig(
        kind="global",
        variant=s.variant,
        image_size=s.image_size,
        width=s.width,
        blocks=tuple(s.blocks),
        latent=s.latent,
        win_size=s.win_size,
        weights=s.weights,
        lr=s.lr,
        lr_schedule=s.lr_schedule,
        estep_every=s.estep_every,
        sigma2_floor=s.sigma2_floor,
    )


def validate(s: ProtocolSettings) -> None:
    """Raise ValueError on settings that cannot run, before any work is done."""
    if s.dataset not in ("mnist", "mvtec"):
        raise ValueError(f"dataset must be mnist or mvtec, got {s.dataset!r}")
    if s.variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {s.variant!r}")
    check_fractions(s.train_fraction, s.contamination)
    if s.dev and s.dataset != "mnist":
        raise ValueError("--dev (the development split) exists for mnist only; MVTec-style data has its own dev sets")
    if not (math.isfinite(s.latent_weight) and s.latent_weight >= 0):
        raise ValueError(f"latent weight must be a finite number >= 0, got {s.latent_weight}")
    if s.epochs < 1 or s.batch_size < 2:
        raise ValueError(f"need epochs >= 1 and batch size >= 2, got {s.epochs} and {s.batch_size}")
    if not s.classes:
        raise ValueError("no classes to run")
    model_config(s)  # size / MS-SSIM / variant checks of the model itself


def _write_scores(path: Path, rows: list[dict]) -> None:
    f = io.StringIO(newline="")
    w = csv.DictWriter(f, fieldnames=["path", "defect", "label", "score"])
    w.writeheader()
    for r in rows:
        w.writerow({**r, "score": repr(r["score"])})
    write_text(path, f.getvalue())


def _atomic_json(path: Path, obj: dict) -> None:
    write_text(path, json.dumps(obj, indent=2), durable=True)


def _markdown(res: dict) -> str:
    s = res["settings"]
    lines = [
        f"# One-class protocol: {s['dataset']}{' (development split)' if s.get('dev') else ''}, variant {s['variant']}",
        "",
        f"train fraction {s['train_fraction']}, contamination {s['contamination']}, seed {s['seed']}, "
        f"epochs {s['epochs']}, image {s['image_size']}², width {s['width']}, blocks {s['blocks']}",
        "",
        "| class | image AUROC | train normal | train anomalous | test normal | test anomalous | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in res["classes"].items():
        lines.append(
            f"| {name} | {r['image_AUROC']:.4f} | {r['n_train_normal']} | {r['n_train_anomaly']} | "
            f"{r['n_test_normal']} | {r['n_test_anomaly']} | {r['seconds']:.0f} |"
        )
    if res.get("mean_image_AUROC") is not None:
        lines.append(f"| **mean** | **{res['mean_image_AUROC']:.4f}** | | | | | {res['total_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


class Protocol:
    """One protocol run over ``settings.classes``, written to ``out``."""

    def __init__(
        self,
        settings: ProtocolSettings,
        out: str | Path,
        device: str = "cpu",
        workers: int = 0,
        progress: bool = False,
        log=print,
        jobs: int = 1,
    ) -> None:
        validate(settings)
        if int(jobs) < 1:
            raise ValueError(f"jobs must be >= 1, got {jobs}")
        self.jobs = int(jobs)
        self.s, self.out, self.device, self.workers, self.progress, self.log = (
            settings,
            Path(out),
            device,
            workers,
            progress,
            log,
        )
        self._mnist: tuple[np.ndarray, np.ndarray] | None = None

    def _prepare(self, name: str, dest: Path):
        """Materialise class ``name``'s split under ``dest``; returns (split, category)."""
        s = self.s
        if s.dataset == "mnist":
            if self._mnist is None:
                self._mnist = load_mnist(s.data, "t10k")
            images, labels = self._mnist
            split = mnist_split(labels, int(name), s.seed, s.train_fraction, s.contamination, s.dev)
            materialise_mnist(images, labels, split, dest, f"class_{name}")
            return split, f"class_{name}"
        train_files = list_train_files(s.data, name)
        samples = list_test_samples(s.data, name)
        split = mvtec_split(len(train_files), [x.label for x in samples], s.seed, s.train_fraction, s.contamination)
        materialise_mvtec(train_files, samples, split, dest, name)
        return split, name

    def run_class(self, name: str) -> dict:
        s = self.s
        t0 = time.perf_counter()
        cdir = self.out / name
        data_root = cdir / "data"
        split, category = self._prepare(name, data_root)
        t1 = time.perf_counter()
        opts = TrainOptions(
            epochs=s.epochs,
            batch_size=s.batch_size,
            workers=self.workers,
            seed=s.seed,
            val_fraction=0.0,  # the training set is exactly the split's
            device=self.device,
            progress=self.progress,
            overwrite=True,  # an unfinished class trains again from the start (finished ones are skipped)
        )
        train(model_config(s), data_root, category, cdir / "model", opts)
        t2 = time.perf_counter()
        rows = score_test_split(
            cdir / "model", data_root, category, self.device, workers=self.workers, latent_weight=s.latent_weight
        )
        _write_scores(cdir / "scores.csv", rows)
        auc = auroc([r["score"] for r in rows], [r["label"] for r in rows])
        t3 = time.perf_counter()
        return {
            "image_AUROC": auc,
            **split.counts(),
            "seconds": t3 - t0,
            "prepare_seconds": t1 - t0,
            "train_seconds": t2 - t1,
            "score_seconds": t3 - t2,
        }

    def run(self) -> dict:
        """Run (or resume) every class; returns the results dict also written to results.json."""
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / "results.json"
        settings = self.s.to_dict()
        res = {"settings": settings, "seed": self.s.seed, "classes": {}, "mean_image_AUROC": None, "total_seconds": 0.0}
        if path.is_file():
            old = json.loads(path.read_text())
            # another class list is fine (e.g. class 3 first, then all): each class's
            # result depends only on the other settings
            same = {k: v for k, v in old.get("settings", {}).items() if k != "classes"}
            if same != {k: v for k, v in settings.items() if k != "classes"}:
                raise ValueError(
                    f"{path} holds a run with other settings; use another --out or remove it\n"
                    f"  there: {old.get('settings')}\n  now:   {settings}"
                )
            res["classes"] = dict(old.get("classes", {}))  # kept even when not asked for now
            done = [k for k in self.s.classes if k in res["classes"]]
            if done:
                self.log(f"resuming: {', '.join(done)} already done in {path}")
        todo = [k for k in self.s.classes if k not in res["classes"]]
        t0 = time.perf_counter()
        for name, r in self._results(todo):
            res["classes"][name] = r
            self.log(f"{self.s.dataset} {name}: image AUROC {r['image_AUROC']:.4f} ({r['seconds']:.0f} s)")
            self._finish(res, path)
        # this invocation's wall time and parallelism (a resumed run: its last part only)
        res["wall_seconds"], res["jobs"] = time.perf_counter() - t0, self.jobs
        self._finish(res, path)
        return res

    def _results(self, names: list[str]):
        """(name, result) of each class as it finishes: in this process, or ``jobs`` at a time."""
        if self.jobs == 1 or len(names) < 2:
            for name in names:
                yield name, self.run_class(name)
            return
        jobs = min(self.jobs, len(names))
        threads = max(1, (os.cpu_count() or 1) // jobs)
        ctx = multiprocessing.get_context("spawn")  # no forked torch thread pools
        args = (self.s, str(self.out), self.device, self.workers, threads)
        with ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
            futures = {pool.submit(_run_class_in_worker, *args, name): name for name in names}
            try:
                for f in as_completed(futures):
                    yield futures[f], f.result()
            except BaseException:
                # interrupted, or a class failed: stop the others now (an unfinished class
                # trains again from the start on resume; finished ones are in results.json)
                procs = list((getattr(pool, "_processes", None) or {}).values())  # shutdown forgets them
                pool.shutdown(wait=False, cancel_futures=True)
                for proc in procs:
                    proc.terminate()
                raise

    def _finish(self, res: dict, path: Path) -> None:
        done = [res["classes"][k] for k in self.s.classes if k in res["classes"]]
        # the asked-for classes first, in order; earlier runs' other classes after them
        asked = [k for k in self.s.classes if k in res["classes"]]
        order = asked + [k for k in res["classes"] if k not in self.s.classes]
        res["classes"] = {k: res["classes"][k] for k in order}
        complete = len(done) == len(self.s.classes)
        # the mean and total cover the asked-for classes (settings.classes) only
        res["mean_image_AUROC"] = float(np.mean([r["image_AUROC"] for r in done])) if complete else None
        res["total_seconds"] = float(sum(r["seconds"] for r in done))
        res["complete"] = complete
        _atomic_json(path, res)
        write_text(self.out / "results.md", _markdown(res))


def _run_class_in_worker(settings: ProtocolSettings, out: str, device: str, workers: int, threads: int,
                         name: str) -> dict:  # fmt: skip
    """One class in a worker process of ``Protocol(jobs > 1)``, with ``threads`` threads."""
    import torch

    torch.set_num_threads(threads)
    return Protocol(settings, out, device, workers, progress=False, log=lambda *a: None).run_class(name)
