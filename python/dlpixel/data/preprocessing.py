"""One preprocessing spec and one function that prepares a tile, shared by training, validation and inference.

Every normalisation strategy reduces to an affine map per channel, ``y = (x - offset) / scale``, optionally clipped
to [0, 1]; the statistics that give ``offset`` and ``scale`` come from the image itself (computed once per image
from a downsampled read: no tile-to-tile differences, so no seams) or from the training dataset, stored in the
classifier's metadata.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

from ..config import NormalizationConfig, NormStrategy
from ..errors import ConfigError
from .base import ImageSource
from .geometry import read_pixels

STATS_MAX_SIDE = 1024
"""Image-level statistics are computed from a read whose longer side is at most this many pixels."""
STATS_MAX_PIXELS = 1 << 18
"""Statistics use at most this many pixels of that read (evenly spaced): plenty for percentiles, and quick."""
STATS_STRIP_ROWS = 256
"""Rows (at the statistics' downsample) read at a time for the statistics."""


class ChannelStats(BaseModel):
    """Per-channel affine normalisation: ``(x - offset) / scale``."""

    model_config = ConfigDict(extra="forbid")

    offset: list[float]
    scale: list[float]


class Preprocessing(BaseModel):
    """Everything needed to turn raw pixels into the model's input, stored in the classifier's metadata."""

    model_config = ConfigDict(extra="forbid")

    channels: list[int]
    """Indices of the image channels the model sees, in order."""
    channel_names: list[str]
    normalization: NormalizationConfig
    context_scale: int = 1
    dataset_stats: ChannelStats | None = None
    """Statistics of the training dataset (used when ``normalization.image_level`` is False)."""
    input_mean: list[float] | None = None
    """After the dataset normalisation, the model sees ``(x - input_mean) / input_std`` per selected channel: the
    input statistics its pretrained weights were trained with (``models.pretrained.input_normalisation``). None:
    no such step (random encoders, and classifiers saved before it existed)."""
    input_std: list[float] | None = None

    @property
    def n_inputs(self) -> int:
        return len(self.channels) * (2 if self.context_scale > 1 else 1)


def resolve_channels(requested: Sequence[int | str] | None, names: Sequence[str], image: str = "") -> list[int]:
    """Turn channel names or indices into indices of ``names``; None means every channel."""
    where = f" of image '{image}'" if image else ""
    if requested is None:
        return list(range(len(names)))
    out = []
    for ch in requested:
        if isinstance(ch, int) or (isinstance(ch, str) and ch.isdigit() and ch not in names):
            idx = int(ch)
            if not 0 <= idx < len(names):
                raise ConfigError(f"channel index {idx} is out of range{where}: it has {len(names)} channels {names}")
        else:
            if ch not in names:
                raise ConfigError(f"channel '{ch}' is not among the channels{where}: {list(names)}")
            idx = list(names).index(ch)
        out.append(idx)
    if len(set(out)) != len(out):
        raise ConfigError(f"a channel is selected twice: {list(requested)}")
    return out


def _stats_from_pixels(pixels: np.ndarray, norm: NormalizationConfig) -> ChannelStats:
    """Statistics of ``pixels`` (N, C) for the strategy, per channel or joint over all channels."""
    n_ch = pixels.shape[1]
    data = pixels.astype(np.float64)
    groups = [data[:, c] for c in range(n_ch)] if norm.per_channel else [data.reshape(-1)]
    offsets, scales = [], []
    for values in groups:
        strategy = norm.strategy
        if strategy == NormStrategy.percentile_99.value:
            lo, hi = np.percentile(values, [1.0, 99.0])
        elif strategy == NormStrategy.min_max.value:
            lo, hi = float(values.min()), float(values.max())
        elif strategy == NormStrategy.z_score.value:
            lo, hi = float(values.mean()), float(values.mean() + values.std())
        else:
            lo, hi = float(norm.min), float(norm.max)  # type: ignore[arg-type]
        scale = float(hi - lo)
        offsets.append(float(lo))
        scales.append(scale if scale > 1e-12 else 1.0)
    if not norm.per_channel:
        offsets, scales = offsets * n_ch, scales * n_ch
    return ChannelStats(offset=offsets, scale=scales)


def stats_read_downsample(source: ImageSource) -> float:
    """The downsample of the statistics read: the image fits in ``STATS_MAX_SIDE`` pixels, taken from a stored
    pyramid level when one is close enough (a cheap read), at most twice as coarse as needed."""
    target = max(1.0, max(source.width, source.height) / STATS_MAX_SIDE)
    stored = [d for d in source.downsamples if target <= d <= 2 * target]
    return min(stored) if stored else target


def sample_pixels(source: ImageSource, channels: Sequence[int]) -> np.ndarray:
    """Pixels (N, C) of the selected channels from one downsampled read of the whole image, every k-th pixel so
    that at most ``STATS_MAX_PIXELS`` remain (plenty for percentiles, and quick)."""
    ds = stats_read_downsample(source)
    # Read in strips of rows: an image without a pyramid is read from full resolution, never all at once.
    rows = max(1, int(round(STATS_STRIP_ROWS * ds)))
    img = np.concatenate([source.read_region(ds, 0, y, source.width, min(rows, source.height - y))
                          for y in range(0, source.height, rows)])
    flat = img.reshape(-1, img.shape[-1])
    step = -(-len(flat) // STATS_MAX_PIXELS)
    return np.ascontiguousarray(flat[::step, list(channels)])


def image_stats(source: ImageSource, pre: Preprocessing, pixels: np.ndarray | None = None) -> ChannelStats:
    """Image-level statistics, computed once per image (from ``pixels`` when ``sample_pixels`` already read them)."""
    if pre.normalization.strategy == NormStrategy.fixed_range.value:
        return _stats_from_pixels(np.zeros((1, len(pre.channels))), pre.normalization)
    return _stats_from_pixels(sample_pixels(source, pre.channels) if pixels is None else pixels, pre.normalization)


def dataset_stats(samples: Sequence[np.ndarray], norm: NormalizationConfig) -> ChannelStats:
    """Statistics over the pixel samples (N_i, C) of every training image, each image weighted equally."""
    n = min(len(s) for s in samples)
    rng = np.random.default_rng(0)
    pooled = np.concatenate([s[rng.choice(len(s), n, replace=False)] if len(s) > n else s for s in samples])
    return _stats_from_pixels(pooled, norm)


def fixed_stats(norm: NormalizationConfig, n_channels: int) -> ChannelStats:
    """The statistics of ``fixed_range``: the same for every image, no pixel read."""
    return _stats_from_pixels(np.zeros((1, n_channels)), norm)


def stats_for(source: ImageSource, pre: Preprocessing) -> ChannelStats:
    """The statistics to use for ``source``: its own (image-level) or the stored training dataset's."""
    if pre.normalization.image_level:
        return image_stats(source, pre)
    if pre.dataset_stats is None:
        if pre.normalization.strategy == NormStrategy.fixed_range.value:
            return fixed_stats(pre.normalization, len(pre.channels))
        raise ConfigError("the classifier normalises with the training data's statistics "
                          "(normalization.image_level=false) but its metadata holds none; retrain or re-import it")
    return pre.dataset_stats


def normalize(raw: np.ndarray, pre: Preprocessing, stats: ChannelStats) -> np.ndarray:
    """Raw selected channels (H, W, C) to float32 model input (H, W, C)."""
    offset = np.asarray(stats.offset, dtype=np.float32)
    inverse = 1.0 / np.asarray(stats.scale, dtype=np.float32)
    out = raw.astype(np.float32)
    out -= offset
    out *= inverse
    if pre.normalization.strategy in (NormStrategy.percentile_99.value, NormStrategy.fixed_range.value):
        np.clip(out, 0.0, 1.0, out=out)
    if pre.input_mean is not None and pre.input_std is not None:
        out -= np.asarray(pre.input_mean, dtype=np.float32)
        out /= np.asarray(pre.input_std, dtype=np.float32)
    return out


def read_tile(
    source: ImageSource, pre: Preprocessing, stats: ChannelStats, downsample: float, x: float, y: float, size: int
) -> np.ndarray:
    """The model input (size, size, n_inputs) float32 for the tile whose top-left full-resolution corner is (x, y).

    Tile pixel (i, j) is the mean of the image over the full-resolution square [x + j·ds, x + (j + 1)·ds) ×
    [y + i·ds, …) (``geometry.read_pixels``: one region read once from the best pyramid level, then exact box
    resampling), so a tile's pixels do not depend on where the tile starts: a corner on the classifier's map grid
    (x = column · ds, as inference reads) gives exactly the map pixels of that column and row. With
    ``context_scale`` N > 1, N× the area centred on the tile is read at N× the downsample and appended as extra
    channels. Training patches and inference tiles both come from here.
    """
    col, row = round(x / downsample), round(y / downsample)
    if abs(col * downsample - x) <= 1e-6 * max(1.0, abs(x)) and abs(row * downsample - y) <= 1e-6 * max(1.0, abs(y)):
        # On the map grid: index the grid from the origin, so the same map pixel is computed the same way whatever
        # tile it falls in.
        raw = read_pixels(source, 0.0, 0.0, downsample, col, row, size, size, pre.channels)
    else:
        raw = read_pixels(source, x, y, downsample, 0, 0, size, size, pre.channels)
    parts = [normalize(raw, pre, stats)]
    if pre.context_scale > 1:
        cs = pre.context_scale
        margin = size * downsample * (cs - 1) / 2
        ctx = read_pixels(source, x - margin, y - margin, downsample * cs, 0, 0, size, size, pre.channels)
        parts.append(normalize(ctx, pre, stats))
    tile = np.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]
    if tile.shape[:2] != (size, size):
        raise ConfigError(f"tile read at ({x}, {y}) has shape {tile.shape[:2]}, expected ({size}, {size})")
    return np.ascontiguousarray(tile)


def read_raw_tile(source: ImageSource, pre: Preprocessing, downsample: float, x: float, y: float,
                  size: int) -> np.ndarray:
    """``read_tile`` before any normalisation (float32 (size, size, n_inputs), context included): the same exact
    read through the identity map, with neither the image statistics nor a backbone's input mean and std applied."""
    n = len(pre.channels)
    identity = pre.model_copy(update={
        "normalization": pre.normalization.model_copy(update={"strategy": NormStrategy.z_score.value}),
        "input_mean": None, "input_std": None})
    return read_tile(source, identity, ChannelStats(offset=[0.0] * n, scale=[1.0] * n), downsample, x, y, size)


def tile_footprint(downsample: float, context_scale: int, x: float, y: float, size: int) -> tuple[int, int, int, int]:
    """Full-resolution bounds (x0, y0, x1, y1) of every pixel a tile's input depends on (context included)."""
    extent = size * downsample
    margin = extent * (context_scale - 1) / 2 if context_scale > 1 else 0.0
    return (math.floor(x - margin), math.floor(y - margin), math.ceil(x + extent + margin - 1e-9),
            math.ceil(y + extent + margin - 1e-9))
