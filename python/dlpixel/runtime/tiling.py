"""The inference tile grid and its blending window.

Tiles overlap by ``overlap`` pixels (stride = tile − overlap) and are blended with a linear ramp across the overlap,
normalised by the summed weights, so a pixel near a tile border takes its value mostly from the tile in which it
lies furthest inside: no seam. The last tile of a row or column is shifted inside the image rather than padded, so
image-edge pixels see real neighbours. All coordinates here are at the classifier's resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_WEIGHT = 1e-3
"""Floor of the blending ramp: a pixel covered by one tile only (at the image edge) keeps that tile's value."""


def axis_positions(length: int, tile: int, stride: int) -> list[int]:
    """Tile starts along one axis of ``length`` pixels; the grid is anchored at 0 and its last tile ends at
    ``length`` (a single tile at 0 when the image is shorter than a tile)."""
    if length <= tile:
        return [0]
    last = length - tile
    pos = list(range(0, last + 1, stride))
    if pos[-1] != last:
        pos.append(last)
    return pos


def ramp(tile: int, overlap: int) -> np.ndarray:
    """1D weights: rising linearly over ``overlap`` pixels at both ends, 1 in the middle."""
    if overlap <= 0:
        return np.ones(tile, np.float32)
    i = np.arange(tile, dtype=np.float32) + 0.5
    w = np.minimum(np.minimum(i, tile - i) / overlap, 1.0)
    return np.maximum(w, MIN_WEIGHT).astype(np.float32)


def blend_window(tile: int, overlap: int) -> np.ndarray:
    """2D blending weights (tile, tile)."""
    r = ramp(tile, overlap)
    return np.outer(r, r)


@dataclass(frozen=True)
class Grid:
    """Tile positions over an image of ``width`` × ``height`` pixels (classifier resolution)."""

    width: int
    height: int
    tile: int
    overlap: int

    @property
    def stride(self) -> int:
        return max(1, self.tile - self.overlap)

    @property
    def xs(self) -> list[int]:
        return axis_positions(self.width, self.tile, self.stride)

    @property
    def ys(self) -> list[int]:
        return axis_positions(self.height, self.tile, self.stride)

    def rows(self, y0: int = 0, y1: int | None = None, x0: int = 0,
             x1: int | None = None) -> list[tuple[int, list[int]]]:
        """Tile rows (y, [x, …]) whose tiles touch the window [x0, x1) × [y0, y1)."""
        y1 = self.height if y1 is None else y1
        x1 = self.width if x1 is None else x1
        xs = [x for x in self.xs if x < x1 and x + self.tile > x0]
        return [(y, xs) for y in self.ys if y < y1 and y + self.tile > y0]

    def final_row_end(self, row_index: int, rows: list[tuple[int, list[int]]]) -> int:
        """Pixel rows above this are complete once tile row ``row_index`` is blended."""
        if row_index + 1 < len(rows):
            return rows[row_index + 1][0]
        return min(self.height, rows[row_index][0] + self.tile)
