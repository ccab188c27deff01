"""Pieces the CLI tests share."""

from __future__ import annotations

import sys

# The smallest model the CLI trains in seconds on 64² synthetic images (the paper's models and
# scoring otherwise: --preset paper, as every flag's own default).
TINY_MODEL_ARGS = [
    "--preset", "paper", "--image-size", "64", "--width", "8", "--blocks", "1", "1", "1", "1", "--latent", "16",
    "--no-progress", "--device", "cpu",
]  # fmt: skip


def torchrun(*args: str) -> list[str]:
    """The command running ``python -m igd_fast *args`` as 2 processes under torchrun."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "igd_fast", *args]  # fmt: skip


# The tiny global + local pair the scoring, export and scoring-option tests share:
# 3 global scales fit 64² with the 11×11 window; tiny widths keep training to seconds.
TINY_GLOBAL = dict(kind="global", image_size=64, width=8, latent=16, blocks=(1, 1, 1, 1), weights=(0.3, 0.3, 0.4))
TINY_LOCAL = dict(kind="local", image_size=64, width=8, latent=16, blocks=(1, 1, 1, 1))


def train_tiny_pair(data, category: str, model_dir) -> None:
    """One epoch of each tiny model into ``model_dir`` (a quarter of train/good held out)."""
    from igd_fast.models import ModelConfig
    from igd_fast.train import train

    for kw in (TINY_GLOBAL, TINY_LOCAL):
        train(ModelConfig(**kw), data, category, model_dir, epochs=1, batch_size=4, workers=0, seed=0,
              val_fraction=0.25, progress=False, patches_per_image=4)  # fmt: skip


def tiny_trained(root, category: str, n_train: int, seed: int, size: int = 80) -> dict:
    """Synthetic MVTec data (``size``² images) under ``root/data`` and a tiny pair trained on it
    in ``root/model``: the module fixtures of the scoring tests."""
    from igd_fast.data import make_synthetic_mvtec

    data, model = root / "data", root / "model"
    make_synthetic_mvtec(data, category, n_train=n_train, n_test_good=3, n_test_bad=3, size=size, seed=seed)
    train_tiny_pair(data, category, model)
    return {"data": data, "model": model, "test": sorted((data / category / "test").rglob("*.png"))}
