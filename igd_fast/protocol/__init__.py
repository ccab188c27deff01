"""The paper's one-class protocols (MNIST one class vs the rest; MVTec-layout categories)
with small (``train_fraction``) and contaminated (``contamination``) training sets.

* :mod:`.splits`: exact, seeded index splits (:func:`mnist_split`, :func:`mvtec_split`).
* :mod:`.materialise`: each split written as a real MVTec-layout folder of PNG files.
* :mod:`.scoring`: per-image scores of a global-only model directory.
* :mod:`.runner`: :class:`Protocol` trains, scores and writes results.json / results.md.
"""

from .materialise import materialise_mnist, materialise_mvtec
from .runner import DATASET_DEFAULTS, VARIANTS, Protocol, ProtocolSettings
from .scoring import score_test_split
from .splits import OneClassSplit, class_pools, mnist_split, mvtec_split, round_half_up

__all__ = [
    "DATASET_DEFAULTS",
    "VARIANTS",
    "OneClassSplit",
    "Protocol",
    "ProtocolSettings",
    "class_pools",
    "materialise_mnist",
    "materialise_mvtec",
    "mnist_split",
    "mvtec_split",
    "round_half_up",
    "score_test_split",
]
