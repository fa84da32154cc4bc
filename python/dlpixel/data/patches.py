"""Training data from sparse annotations: label rasterisation, tile sampling, a leak-free split, the patch cache.

Label masks hold class indices with 255 for unlabelled pixels. A pixel belongs to a shape when its centre lies
inside it; a line is its flat-capped buffer of the stroke width, a point a disc of that diameter (``data.geometry``).
Where shapes overlap, the smaller one wins: areas are drawn from the largest to the smallest, then lines (longest
first), then points, so a small region or a stroke drawn inside a large region keeps its own class.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import shapely
from shapely.strtree import STRtree

from ..errors import ConfigError, DataError
from ..runtime.tiling import axis_positions
from .base import ImageSource, LabelShape
from .geometry import rasterize
from .preprocessing import ChannelStats, Preprocessing, normalize, read_raw_tile, tile_footprint

UNLABELLED = 255
DEFAULT_STROKE_PX = 5.0
"""Stroke width (training pixels) of line annotations when QuPath's own stroke thickness is not known."""


def rasterize_labels(
    shapes: Sequence[LabelShape],
    class_index: dict[str, int],
    x0: float,
    y0: float,
    downsample: float,
    size: tuple[int, int],
    stroke_width: float = DEFAULT_STROKE_PX,
) -> np.ndarray:
    """Mask (rows, cols) uint8 of the full-resolution window starting at (x0, y0) sampled at ``downsample``
    (``geometry.rasterize``: pixel-centre rule; a line is its flat-capped buffer ``stroke_width`` pixels wide)."""
    return rasterize(shapes, class_index, x0, y0, downsample, size, stroke_width, UNLABELLED)


@dataclass(frozen=True)
class TileRef:
    """A training tile: image index and full-resolution top-left corner."""

    image: int
    x: int
    y: int


def sample_tiles(
    image_index: int,
    source: ImageSource,
    shapes: Sequence[LabelShape],
    tile_size: int,
    downsample: float,
    overlap_percent: float,
    stroke_width: float,
) -> list[TileRef]:
    """Grid tiles that touch a labelled shape (a shape's outline buffered by half a stroke)."""
    extent = int(round(tile_size * downsample))
    stride = max(1, int(round(extent * (1 - overlap_percent / 100.0))))
    geoms = [s.geometry if s.kind == "area" else s.geometry.buffer(max(stroke_width, 1) * downsample / 2)
             for s in shapes]
    if not geoms:
        return []
    tree = STRtree(geoms)
    out = []
    for y in axis_positions(source.height, extent, stride):
        for x in axis_positions(source.width, extent, stride):
            if len(tree.query(shapely.box(x, y, x + extent, y + extent), predicate="intersects")):
                out.append(TileRef(image_index, x, y))
    return out


@dataclass
class Split:
    """Which tiles train and which validate, and how that was decided (recorded in the metadata)."""

    train: list[int]
    val: list[int]
    method: str
    val_images: list[str] = field(default_factory=list)
    val_blocks: list[list[int]] = field(default_factory=list)
    """Validation blocks as [image index, x0, y0, x1, y1] in full-resolution pixels."""
    dropped: int = 0
    """Training tiles left out because their input would overlap a validation tile's."""
    warnings: list[str] = field(default_factory=list)

    def record(self) -> dict:
        return {
            "method": self.method,
            "train_tiles": len(self.train),
            "val_tiles": len(self.val),
            "val_images": self.val_images,
            "val_blocks": self.val_blocks,
            "dropped_train_tiles": self.dropped,
            "warnings": self.warnings,
        }


def _class_presence(counts: np.ndarray) -> np.ndarray:
    return counts > 0


def split_tiles(
    tiles: Sequence[TileRef],
    tile_counts: np.ndarray,
    image_names: Sequence[str],
    fraction: float,
    tile_size: int,
    downsample: float,
    context_scale: int,
    seed: int,
) -> Split:
    """Split tiles into training and validation so that no input pixel is shared between the two sides.

    ``tile_counts`` (n_tiles, n_classes) holds labelled pixels per class. Whole images go to validation when that
    leaves every class on both sides; otherwise square blocks inside the images do, chosen to put every class into
    validation where possible. Training tiles whose input (context included) overlaps a validation tile's are
    dropped.
    """
    n_classes = tile_counts.shape[1]
    by_image: dict[int, list[int]] = {}
    for i, t in enumerate(tiles):
        by_image.setdefault(t.image, []).append(i)
    per_image = {im: tile_counts[idx].sum(0) for im, idx in by_image.items()}
    total = tile_counts.sum(0)

    images = sorted(by_image)
    best: tuple[float, tuple[int, ...]] | None = None
    if len(images) >= 2 and len(images) <= 16:
        for k in range(1, len(images)):
            for combo in itertools.combinations(images, k):
                val = sum(per_image[i] for i in combo)
                train = total - val
                if not (_class_presence(val).all() and _class_presence(train).all()):
                    continue
                share = val.sum() / max(total.sum(), 1)
                score = abs(share - fraction)
                if share <= 0.5 and (best is None or score < best[0]):
                    best = (score, combo)
    if best is not None:
        val_images = set(best[1])
        val = [i for i, t in enumerate(tiles) if t.image in val_images]
        train = [i for i, t in enumerate(tiles) if t.image not in val_images]
        return Split(train, val, "by_image", val_images=[image_names[i] for i in sorted(val_images)])
    return _split_by_blocks(tiles, tile_counts, fraction, tile_size, downsample, context_scale, seed, n_classes)


def _split_by_blocks(
    tiles: Sequence[TileRef],
    tile_counts: np.ndarray,
    fraction: float,
    tile_size: int,
    downsample: float,
    context_scale: int,
    seed: int,
    n_classes: int,
) -> Split:
    extent = int(round(tile_size * downsample))

    def group(block: int) -> dict[tuple[int, int, int], list[int]]:
        out: dict[tuple[int, int, int], list[int]] = {}
        for i, t in enumerate(tiles):
            out.setdefault((t.image, (t.x + extent // 2) // block, (t.y + extent // 2) // block), []).append(i)
        return out

    # Blocks of 2 × 2 tiles; single tiles where that leaves too few blocks to choose from (small images).
    block = 2 * extent
    blocks = group(block)
    if len(blocks) < 10:
        block = extent
        blocks = group(block)
    keys = sorted(blocks)
    if len(keys) < 2:
        raise DataError(
            "the annotations fit in a single validation block, so no leak-free validation split exists; "
            "annotate a larger area or a second image, or use a smaller tile_size"
        )
    rng = np.random.default_rng(seed)
    rng.shuffle(keys)
    counts = {k: tile_counts[blocks[k]].sum(0) for k in keys}
    total = tile_counts.sum(0)
    target = fraction * total.sum()
    val_keys: list[tuple[int, int, int]] = []
    val_counts = np.zeros(n_classes, np.int64)
    # Rarest classes first: give each a block that holds it, as long as training keeps some of it.
    for c in np.argsort(total):
        if val_counts[c] > 0 or total[c] == 0:
            continue
        for k in sorted((k for k in keys if k not in val_keys and counts[k][c] > 0),
                        key=lambda k: counts[k].sum()):
            if (total - val_counts - counts[k])[c] > 0 and val_counts.sum() + counts[k].sum() <= max(target, 1) * 1.5:
                val_keys.append(k)
                val_counts += counts[k]
                break
    for k in keys:
        if val_counts.sum() >= target or len(val_keys) >= len(keys) - 1:
            break
        if k not in val_keys:
            val_keys.append(k)
            val_counts += counts[k]
    if not val_keys:
        val_keys.append(keys[0])
        val_counts += counts[keys[0]]
    val = sorted(i for k in val_keys for i in blocks[k])
    val_set = set(val)
    footprints = [tile_footprint(downsample, context_scale, tiles[i].x, tiles[i].y, tile_size) for i in val]
    trees: dict[int, STRtree] = {}
    for im in {tiles[i].image for i in val}:
        trees[im] = STRtree([shapely.box(*footprints[j]) for j, i in enumerate(val) if tiles[i].image == im])
    train, dropped = [], 0
    for i, t in enumerate(tiles):
        if i in val_set:
            continue
        tree = trees.get(t.image)
        box = shapely.box(*tile_footprint(downsample, context_scale, t.x, t.y, tile_size))
        # Touching edges share no pixel; only a positive-area overlap is a leak.
        if tree is not None and any(tree.geometries[j].intersection(box).area > 0 for j in tree.query(box)):
            dropped += 1
            continue
        train.append(i)
    warnings = []
    # Classes missing on either side are checked, by name, after the split (training.run.check_split_classes).
    if not train:
        raise DataError("no training tiles are left after setting validation blocks aside; annotate more area")
    val_blocks = [[k[0], k[1] * block, k[2] * block, (k[1] + 1) * block, (k[2] + 1) * block] for k in sorted(val_keys)]
    return Split(train, val, "by_blocks", val_blocks=val_blocks, dropped=dropped, warnings=warnings)


def label_counts(mask: np.ndarray, n_classes: int) -> np.ndarray:
    """Labelled pixels per class in one label mask (unlabelled pixels are not counted)."""
    return np.bincount(mask.reshape(-1), minlength=256)[:n_classes]


class PatchCache:
    """Label masks and inputs of every tile, extracted once (in memory).

    With ``pre`` and ``stats`` the tiles are kept as raw pixels (``raw``: the image's dtype, uint8 is 4× smaller
    than float32; float32 where the training resolution resamples) and normalised when read, by the same
    ``normalize`` as inference; without them ``raw`` holds model inputs already.
    """

    def __init__(self, images: np.ndarray, masks: np.ndarray, tiles: list[TileRef],
                 pre: Preprocessing | None = None, stats: Sequence[ChannelStats] | None = None):
        self.raw = images
        self.masks = masks
        self.tiles = tiles
        self.pre = pre
        self.stats = list(stats) if stats is not None else None

    def __len__(self) -> int:
        return len(self.tiles)

    def input(self, index: int) -> np.ndarray:
        """Model input (C, H, W) float32 of tile ``index``."""
        raw = self.raw[index]
        if self.pre is None or self.stats is None:
            return raw
        stats = self.stats[self.tiles[index].image]
        n = len(stats.offset)
        hwc = raw.transpose(1, 2, 0)
        parts = [normalize(hwc[..., i: i + n], self.pre, stats) for i in range(0, hwc.shape[-1], n)]
        out = parts[0] if len(parts) == 1 else np.concatenate(parts, -1)
        return np.ascontiguousarray(out.transpose(2, 0, 1))

    @property
    def images(self) -> _Inputs:
        """Model inputs (N, C, H, W) float32, normalised per index on access."""
        return _Inputs(self)


class _Inputs:
    """Indexable view of a patch cache's model inputs."""

    def __init__(self, cache: PatchCache):
        self.cache = cache
        self.shape = cache.raw.shape
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, index: int | np.integer) -> np.ndarray:
        if not isinstance(index, (int, np.integer)):
            raise TypeError("patch inputs are read one tile at a time")
        return self.cache.input(int(index))


def _raw_tile(source: ImageSource, pre: Preprocessing, downsample: float, x: float, y: float, size: int,
              ) -> np.ndarray:
    """``read_tile`` without normalisation (``preprocessing.read_raw_tile``; float32, exact)."""
    return read_raw_tile(source, pre, downsample, x, y, size)


def extract_patches(
    sources: Sequence[ImageSource],
    shapes_per_image: Sequence[Sequence[LabelShape]],
    stats_per_image: Sequence[ChannelStats],
    pre: Preprocessing,
    class_index: dict[str, int],
    tile_size: int,
    downsample: float,
    overlap_percent: float,
    stroke_width: float,
    progress: Callable[[int, int], None] | None = None,
    channels_per_image: Sequence[Sequence[int]] | None = None,
) -> PatchCache:
    """Sample tiles over every image's labels and read each tile's input and mask once; unlabelled tiles go.
    ``channels_per_image``: where ``pre``'s channels sit in each image (default: ``pre.channels`` in all)."""
    pres = [pre if channels_per_image is None else pre.model_copy(update={"channels": list(c)})
            for c in (channels_per_image or [pre.channels] * len(sources))]
    candidates: list[TileRef] = []
    for i, (src, shapes) in enumerate(zip(sources, shapes_per_image)):
        labelled = [s for s in shapes if s.class_name in class_index]
        candidates += sample_tiles(i, src, labelled, tile_size, downsample, overlap_percent, stroke_width)
    n_in = pre.n_inputs
    # Raw pixels in the images' dtype when every tile holds stored values (else float32, decided on the way).
    dtypes = {np.dtype(getattr(s, "dtype", np.float32)) for s in sources}
    store = dtypes.pop() if len(dtypes) == 1 else np.dtype(np.float32)
    if store.kind not in "ui":
        store = np.dtype(np.float32)
    images = np.empty((len(candidates), n_in, tile_size, tile_size), store)
    masks = np.empty((len(candidates), tile_size, tile_size), np.uint8)
    kept: list[TileRef] = []
    extent = tile_size * downsample
    margin = max(stroke_width, 1) * downsample
    trees = [STRtree([s.geometry for s in shapes]) if shapes else None for shapes in shapes_per_image]
    for n, t in enumerate(candidates):
        # Only the shapes near the tile are drawn (a point or line reaches half a stroke beyond its geometry).
        shapes = shapes_per_image[t.image]
        tree = trees[t.image]
        near = [] if tree is None else [shapes[i] for i in sorted(tree.query(
            shapely.box(t.x - margin, t.y - margin, t.x + extent + margin, t.y + extent + margin)))]
        mask = rasterize_labels(near, class_index, t.x, t.y, downsample, (tile_size, tile_size), stroke_width)
        if (mask != UNLABELLED).any():
            tile = _raw_tile(sources[t.image], pres[t.image], downsample, t.x, t.y, tile_size).transpose(2, 0, 1)
            if images.dtype != np.float32 and not np.array_equal(tile.astype(images.dtype), tile):
                images = images.astype(np.float32)  # resampled pixels: keep them exact
            images[len(kept)] = tile
            masks[len(kept)] = mask
            kept.append(t)
        if progress is not None:
            progress(n + 1, len(candidates))
    if len(kept) < len(candidates):
        images, masks = images[: len(kept)].copy(), masks[: len(kept)].copy()
    return PatchCache(images, masks, kept, pre, stats_per_image)


def check_tile_fits(sources: Sequence[ImageSource], names: Sequence[str], tile_size: int, downsample: float) -> None:
    """Refuse a tile larger than every image at the training resolution."""
    extent = tile_size * downsample
    if all(s.width < extent or s.height < extent for s in sources):
        largest = max((min(s.width, s.height) / downsample, n) for s, n in zip(sources, names))
        fit = 32 * math.floor(largest[0] / 32)
        raise ConfigError(
            f"tile_size {tile_size} at downsample {downsample} is larger than every image "
            f"(largest fits {fit} px: '{largest[1]}'); lower tile_size or downsample"
        )
