"""Exact, deterministic one-class splits (the paper's MNIST and small/contaminated protocols).

Rules (all counts are ``round_half_up(x) = floor(x + 0.5)``; every index array is sorted):

MNIST (the 10,000-image test set, labels 0..9):
  * pools, once per seed and independent of the normal class: the images of class c (in
    file order) are permuted by ``numpy.random.default_rng(seed)`` (one generator,
    classes visited 0..9); the first ``floor(n_c / 2)`` form c's training pool, the rest
    its test pool (50/50, the odd image goes to test).
  * normal class K: the training normals are the first ``round_half_up(F * n)`` images of
    a permutation of K's training pool by ``default_rng([seed, K, 1])`` (F =
    ``train_fraction``, n = the pool size), so smaller fractions are subsets of larger.
  * contamination R adds ``round_half_up(R * n_train_normal)`` anomalies: the first ones
    of a permutation of the other nine classes' training pools (concatenated, sorted) by
    ``default_rng([seed, K, 2])``; nested in R the same way.
  * test set: the test pools of all ten classes (K's = normal, the rest = anomalous).
  * development split (``dev=True``), for choosing settings without touching any test
    pool: every class's training pool is split again, its first ``floor(DEV_TRAIN * n)``
    images (in the order of a permutation by ``default_rng([seed, c, 3])``) becoming the
    class's training pool and the rest its test pool; the rules above then apply to
    these smaller pools.

MVTec layout (one category): train/good gives the training normals, subsampled by F with
``default_rng([seed, 1])``; contamination draws ``round_half_up(R * n_train_normal)``
anomalous test images by ``default_rng([seed, 2])`` and REMOVES them from the test set
(as the paper does), keeping at least one anomaly there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def round_half_up(x: float) -> int:
    """floor(x + 0.5): the count rule of every fraction here (Python's round() is banker's)."""
    return int(math.floor(x + 0.5))


@dataclass(frozen=True)
class ClassPools:
    """Per class, the sorted indices of its training pool and of its test pool."""

    train: dict[int, np.ndarray]
    test: dict[int, np.ndarray]


@dataclass(frozen=True)
class OneClassSplit:
    """One run's split as sorted index arrays. For MNIST all index the image array; for
    the MVTec layout ``train_normal`` indexes train/good and the others the test samples."""

    train_normal: np.ndarray
    train_anomaly: np.ndarray  # the contamination
    test_normal: np.ndarray
    test_anomaly: np.ndarray

    def counts(self) -> dict[str, int]:
        return {
            "n_train_normal": len(self.train_normal),
            "n_train_anomaly": len(self.train_anomaly),
            "n_test_normal": len(self.test_normal),
            "n_test_anomaly": len(self.test_anomaly),
        }

    def to_dict(self) -> dict[str, list[int]]:
        return {k: [int(i) for i in getattr(self, k)] for k in OneClassSplit.__dataclass_fields__}


def check_fractions(train_fraction: float, contamination: float) -> None:
    if not 0.0 < train_fraction <= 1.0:
        raise ValueError(f"train fraction must be in (0, 1], got {train_fraction}")
    if not 0.0 <= contamination < 1.0:
        raise ValueError(f"contamination must be in [0, 1), got {contamination}")


DEV_TRAIN = 0.7  # share of a training pool that trains in the development split


def class_pools(labels: Sequence[int] | np.ndarray, seed: int = 0, dev: bool = False) -> ClassPools:
    """Split every class 50/50 into a training and a test pool (see the module rules);
    ``dev`` splits the training pools again and drops the test pools."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, test = {}, {}
    for c in sorted(int(v) for v in np.unique(labels)):
        perm = rng.permutation(np.flatnonzero(labels == c))
        n_tr = len(perm) // 2
        train[c], test[c] = np.sort(perm[:n_tr]), np.sort(perm[n_tr:])
    if dev:
        for c, pool in train.items():
            perm = np.random.default_rng([seed, c, 3]).permutation(pool)
            n_tr = int(math.floor(DEV_TRAIN * len(perm)))
            train[c], test[c] = np.sort(perm[:n_tr]), np.sort(perm[n_tr:])
    return ClassPools(train, test)


def _keep(pool: np.ndarray, fraction: float, rng: np.random.Generator, what: str) -> np.ndarray:
    n = round_half_up(fraction * len(pool))
    if n < 2:
        raise ValueError(f"train fraction {fraction} keeps {n} of {len(pool)} {what}; training needs at least 2")
    return np.sort(rng.permutation(pool)[:n])


def _draw(candidates: np.ndarray, n: int, rng: np.random.Generator, what: str) -> np.ndarray:
    if n > len(candidates):
        raise ValueError(f"contamination needs {n} anomalies but only {len(candidates)} {what} exist")
    return np.sort(rng.permutation(np.sort(candidates))[:n])


def mnist_split(
    labels: Sequence[int] | np.ndarray,
    normal_class: int,
    seed: int = 0,
    train_fraction: float = 1.0,
    contamination: float = 0.0,
    dev: bool = False,
) -> OneClassSplit:
    """The one-class split of a labelled image set for normal class ``normal_class``
    (``dev``: the development split, disjoint from every test pool)."""
    check_fractions(train_fraction, contamination)
    pools = class_pools(labels, seed, dev)
    if normal_class not in pools.train:
        raise ValueError(f"normal class {normal_class} is not among the labels {sorted(pools.train)}")
    k = int(normal_class)
    normal = _keep(pools.train[k], train_fraction, np.random.default_rng([seed, k, 1]), f"class-{k} training images")
    others = [c for c in pools.train if c != k]
    n_anom = round_half_up(contamination * len(normal))
    cand = np.concatenate([pools.train[c] for c in others]) if others else np.zeros(0, np.int64)
    anomaly = _draw(cand, n_anom, np.random.default_rng([seed, k, 2]), "other-class training images")
    test_anom = np.concatenate([pools.test[c] for c in others]) if others else np.zeros(0, np.int64)
    return OneClassSplit(normal, anomaly, pools.test[k], np.sort(test_anom))


def mvtec_split(
    n_train: int,
    test_labels: Sequence[int] | np.ndarray,
    seed: int = 0,
    train_fraction: float = 1.0,
    contamination: float = 0.0,
) -> OneClassSplit:
    """The split of one MVTec-layout category: ``n_train`` train/good files, test samples
    labelled 0 (good) / 1 (defect) in ``test_labels`` order."""
    check_fractions(train_fraction, contamination)
    test_labels = np.asarray(test_labels)
    normal = _keep(np.arange(n_train), train_fraction, np.random.default_rng([seed, 1]), "train/good images")
    anomalous = np.flatnonzero(test_labels == 1)
    n_anom = round_half_up(contamination * len(normal))
    if n_anom >= len(anomalous) and n_anom > 0:
        raise ValueError(
            f"contamination {contamination} moves {n_anom} of the {len(anomalous)} anomalous test images "
            f"into training; at least one must stay in the test set"
        )
    moved = _draw(anomalous, n_anom, np.random.default_rng([seed, 2]), "anomalous test images")
    return OneClassSplit(normal, moved, np.flatnonzero(test_labels == 0), np.setdiff1d(anomalous, moved))
