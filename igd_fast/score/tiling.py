"""Tiles: a large image cut into overlapping square tiles that a fully convolutional model
scores one batch at a time, and their maps stitched back at the image's own size.

Tiles start every ``stride`` pixels and the last one ends at the image's edge, so every pixel
is covered; where tiles overlap, their maps are blended with weights that fall linearly
towards each tile's edges (never to zero), so a seam does not show and a map that is the same
in every tile comes back exactly as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

# a tile's weight at its very edge, relative to 1 at its centre: small, so the tile whose
# centre is nearer decides, but never 0, so an image edge covered by one tile keeps its value
EDGE_WEIGHT = 0.05


def starts(length: int, tile: int, stride: int) -> list[int]:
    """Tile offsets along one side: every ``stride`` pixels, the last tile ending at the edge."""
    if tile >= length:
        return [0]
    out = list(range(0, length - tile, stride))
    return out + [length - tile]


def ramp(length: int, device: torch.device | None = None) -> Tensor:
    """1-D blending weights of one tile side: 1 in the middle, :data:`EDGE_WEIGHT` at the ends."""
    if length == 1:
        return torch.ones(1, device=device)
    pos = torch.arange(length, device=device, dtype=torch.float32)
    dist = torch.minimum(pos, length - 1 - pos) / ((length - 1) / 2)  # 0 at the edges, 1 at the centre
    return EDGE_WEIGHT + (1 - EDGE_WEIGHT) * dist


@dataclass(frozen=True)
class Tiler:
    """Square tiles of side ``tile`` every ``stride`` pixels (``stride <= tile``: they overlap
    by ``tile - stride``)."""

    tile: int
    stride: int

    def __post_init__(self) -> None:
        if not (1 <= self.stride <= self.tile):
            raise ValueError(f"a tiler needs 1 <= stride <= tile, got tile {self.tile}, stride {self.stride}")

    def boxes(self, height: int, width: int) -> list[tuple[int, int, int, int]]:
        """(top, left, tile height, tile width) of every tile of an H×W image, row by row."""
        th, tw = min(self.tile, height), min(self.tile, width)
        return [(y, x, th, tw) for y in starts(height, th, self.stride) for x in starts(width, tw, self.stride)]

    def split(self, x: Tensor) -> Tensor:
        """N×C×H×W -> (T·N)×C×th×tw, tile-major (every image's first tile, then the second, ...)."""
        return torch.cat([x[..., y : y + h, c : c + w] for y, c, h, w in self.boxes(*x.shape[-2:])])

    def stitch(self, maps: Tensor, height: int, width: int) -> Tensor:
        """The (T·N)×C×th×tw maps of :meth:`split`'s tiles blended back into N×C×H×W."""
        boxes = self.boxes(height, width)
        n = maps.shape[0] // len(boxes)
        th, tw = boxes[0][2:]
        wt = (ramp(th, maps.device)[:, None] * ramp(tw, maps.device)[None, :]).to(maps.dtype)
        out = maps.new_zeros(n, maps.shape[1], height, width)
        total = maps.new_zeros(height, width)
        for i, (y, c, h, w) in enumerate(boxes):
            out[..., y : y + h, c : c + w] += maps[i * n : (i + 1) * n] * wt
            total[y : y + h, c : c + w] += wt
        return out / total

    def apply(self, fn: Callable[[Tensor], Tensor], x: Tensor, batch: int) -> Tensor:
        """``fn`` (maps of a batch of tiles, same height and width) over ``x``'s tiles, at most
        ``batch`` tiles a call, stitched back; ``x`` as it is when one tile covers it."""
        h, w = x.shape[-2:]
        if h <= self.tile and w <= self.tile:
            return fn(x)
        tiles = self.split(x)
        return self.stitch(torch.cat([fn(t) for t in tiles.split(batch)]), h, w)
