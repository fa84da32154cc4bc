"""Rows of inference tiles from one read of the strip they span.

A row of overlapping tiles is read as one strip of map pixels (``data.geometry.read_pixels``, whose pixels depend
only on their own square, so a tile cut from the strip equals the tile read alone) and cut in memory: overlapping
pixels are read and decoded once. TIFF decoding (tifffile, imagecodecs) releases the GIL, so rows read by a pool
of threads decode in parallel with the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..data.base import ImageSource
from ..data.geometry import read_pixels
from ..data.preprocessing import ChannelStats, Preprocessing, normalize, read_raw_tile

MAX_STRIP_WASTE = 2.0
"""A row whose kept tiles are sparse (a strip more than this many times their area) is read tile by tile."""


def _raw_tile_with_context(source: ImageSource, pre: Preprocessing, downsample: float, x: int, y: int,
                           size: int) -> np.ndarray:
    """``read_tile`` without normalisation (``preprocessing.read_raw_tile``; float32)."""
    return read_raw_tile(source, pre, downsample, x * downsample, y * downsample, size)


def read_raw_block(source: ImageSource, pre: Preprocessing, downsample: float, xs: Sequence[int], y: int,
                   size: int) -> tuple[np.ndarray, list[int]]:
    """The raw tiles at map position (x, y) for each x of ``xs`` (ascending) as one block (size, width, n_inputs)
    and the column where each tile starts in it: the strip the row spans, read once, where the tiles are dense;
    the tiles side by side where they are sparse or carry context channels. The image's dtype where map pixels are
    stored pixels, float32 where they are resampled; equal to ``read_tile`` before normalisation."""
    if not xs:
        return np.zeros((size, 0, pre.n_inputs), np.float32), []
    x0, x1 = xs[0], xs[-1] + size
    if pre.context_scale > 1 or (x1 - x0) > MAX_STRIP_WASTE * size * len(xs):
        if pre.context_scale > 1:
            tiles = [_raw_tile_with_context(source, pre, downsample, x, y, size) for x in xs]
        else:
            tiles = [read_pixels(source, 0.0, 0.0, downsample, x, y, size, size, pre.channels) for x in xs]
        if len({t.dtype for t in tiles}) > 1:  # stored and resampled pixels side by side: float32 holds both
            tiles = [t.astype(np.float32) for t in tiles]
        return np.concatenate(tiles, axis=1), [i * size for i in range(len(xs))]
    strip = read_pixels(source, 0.0, 0.0, downsample, x0, y, x1 - x0, size, pre.channels)
    return strip, [x - x0 for x in xs]


def read_raw_row(source: ImageSource, pre: Preprocessing, downsample: float, xs: Sequence[int], y: int,
                 size: int) -> list[np.ndarray]:
    """The tiles of ``read_raw_block``, each its own (size, size, n_inputs) array."""
    return tiles_of(*read_raw_block(source, pre, downsample, xs, y, size), size)


def tiles_of(block: np.ndarray, offsets: Sequence[int], size: int) -> list[np.ndarray]:
    """The tiles (size, size, n_inputs) starting at columns ``offsets`` of a row's block, each its own array."""
    return [np.ascontiguousarray(block[:, c: c + size]) for c in offsets]


def normalize_raw(raw: np.ndarray, pre: Preprocessing, stats: ChannelStats) -> np.ndarray:
    """``normalize`` of a raw tile of ``read_raw_row`` (context channels with the same statistics), as
    ``read_tile`` does."""
    n = len(stats.offset)
    if raw.shape[-1] == n:
        return normalize(raw, pre, stats)
    return np.concatenate([normalize(raw[..., i: i + n], pre, stats) for i in range(0, raw.shape[-1], n)], -1)
