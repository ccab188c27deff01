"""Pieces the CLI tests share."""

from __future__ import annotations

import sys

# The smallest model the CLI trains in seconds on 64² synthetic images.
TINY_MODEL_ARGS = [
    "--image-size", "64", "--width", "8", "--blocks", "1", "1", "1", "1", "--latent", "16",
    "--no-progress", "--device", "cpu",
]  # fmt: skip


def torchrun(*args: str) -> list[str]:
    """The command running ``python -m igd_fast *args`` as 2 processes under torchrun."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "igd_fast", *args]  # fmt: skip
