"""Write one run's split as a real MVTec-layout folder, so training and scoring go
through the package's ordinary data path.

Layout written under ``dest/<category>``::

    train/good/            the training set: normals + the contaminating anomalies
    test/good/             normal test images
    test/<defect>/         anomalous test images (MNIST: ``anomaly``)
    ground_truth/<defect>/<name>_mask.png  masks (MNIST: all zero; MVTec: the real ones)
    split.json             the split's index arrays and the file each index became

MNIST files keep their position in the idx file and their label in the name
(``01234_7.png``), so a training folder shows its contamination at a glance. Images are
written at their native 28×28; the loader resizes them to the model size.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from ..data import Sample
from ..outputs import write_text
from .splits import OneClassSplit

MNIST_ANOMALY = "anomaly"


def _fresh(cat: Path) -> None:
    # a half-written folder of an interrupted run must not leak files into this one
    if cat.exists():
        shutil.rmtree(cat)
    for sub in ("train/good", "test/good"):
        (cat / sub).mkdir(parents=True)


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # other file system, or links not allowed
        shutil.copyfile(src, dst)


def _write_json(path: Path, obj: dict) -> None:
    write_text(path, json.dumps(obj, indent=1))


def materialise_mnist(
    images: np.ndarray, labels: np.ndarray, split: OneClassSplit, dest: str | Path, category: str
) -> Path:
    """Write ``split`` of the MNIST arrays to ``dest/category``; returns that folder."""
    cat = Path(dest) / category
    _fresh(cat)
    (cat / "test" / MNIST_ANOMALY).mkdir(parents=True)
    (cat / "ground_truth" / MNIST_ANOMALY).mkdir(parents=True)
    zero = Image.fromarray(np.zeros(images.shape[1:], np.uint8))
    files: dict[str, list[str]] = {}

    def put(part: str, idx: np.ndarray, folder: str, mask: bool) -> None:
        names = []
        for i in idx:
            name = f"{int(i):05d}_{int(labels[i])}"
            Image.fromarray(images[i]).save(cat / folder / f"{name}.png")
            if mask:
                zero.save(cat / "ground_truth" / MNIST_ANOMALY / f"{name}_mask.png")
            names.append(f"{folder}/{name}.png")
        files[part] = names

    put("train_normal", split.train_normal, "train/good", False)
    put("train_anomaly", split.train_anomaly, "train/good", False)
    put("test_normal", split.test_normal, "test/good", False)
    put("test_anomaly", split.test_anomaly, f"test/{MNIST_ANOMALY}", True)
    _write_json(cat / "split.json", {"indices": split.to_dict(), "files": files})
    return cat


def materialise_mvtec(
    train_files: list[Path], test_samples: list[Sample], split: OneClassSplit, dest: str | Path, category: str
) -> Path:
    """Write ``split`` of one MVTec-layout category to ``dest/category`` (hard links where
    the file system allows, else copies); returns that folder. Contaminating test images
    go to train/good as ``<defect>_<name>`` (names repeat across defect folders)."""
    cat = Path(dest) / category
    _fresh(cat)
    files: dict[str, list[str]] = {k: [] for k in ("train_normal", "train_anomaly", "test_normal", "test_anomaly")}
    for i in split.train_normal:
        src = Path(train_files[i])
        _link_or_copy(src, cat / "train" / "good" / src.name)
        files["train_normal"].append(f"train/good/{src.name}")
    for i in split.train_anomaly:
        s = test_samples[i]
        name = f"{s.defect}_{s.path.name}"
        _link_or_copy(s.path, cat / "train" / "good" / name)
        files["train_anomaly"].append(f"train/good/{name}")
    for part, idx in (("test_normal", split.test_normal), ("test_anomaly", split.test_anomaly)):
        for i in idx:
            s = test_samples[i]
            _link_or_copy(s.path, cat / "test" / s.defect / s.path.name)
            if s.mask is not None:
                _link_or_copy(s.mask, cat / "ground_truth" / s.defect / s.mask.name)
            files[part].append(f"test/{s.defect}/{s.path.name}")
    _write_json(cat / "split.json", {"indices": split.to_dict(), "files": files})
    return cat
