"""The geometry of a classifier applied to an image (``Frame``) and exact rasterisation: a pixel belongs to a
shape when its centre lies inside it.

Used for training labels, inference reads, measurements and objects, so an area counted here is the area QuPath
users expect from the shape they drew, to the full-resolution pixel, at any downsample.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import shapely

from .base import ImageSource, LabelShape


def _rings(geom: shapely.Geometry) -> list[np.ndarray]:
    polys = geom.geoms if hasattr(geom, "geoms") else [geom]
    out = []
    for poly in polys:
        if poly.geom_type != "Polygon" or poly.is_empty:
            continue
        out.append(np.asarray(poly.exterior.coords, np.float64))
        out += [np.asarray(r.coords, np.float64) for r in poly.interiors]
    return out


def polygon_mask(
    geom: shapely.Geometry, x0: float, y0: float, downsample: float, shape: tuple[int, int]
) -> np.ndarray:
    """Boolean (rows, cols) mask of the pixels of the window at (x0, y0), sampled at ``downsample``, whose centres
    lie inside ``geom`` (Polygon or MultiPolygon; holes excluded), by an even-odd scanline fill."""
    rows, cols = shape
    rings = _rings(geom)
    if not rings:
        return np.zeros(shape, bool)
    edges = np.concatenate([np.stack([r[:-1], r[1:]], axis=1) for r in rings if len(r) > 1])
    edges = (edges - (x0, y0)) / downsample  # (n, 2 points, xy)
    xa, ya, xb, yb = edges[:, 0, 0], edges[:, 0, 1], edges[:, 1, 0], edges[:, 1, 1]
    keep = ya != yb
    xa, ya, xb, yb = xa[keep], ya[keep], xb[keep], yb[keep]
    lo, hi = np.minimum(ya, yb), np.maximum(ya, yb)
    # Rows whose centre y = i + 0.5 satisfies lo <= y < hi (half-open, so a vertex is counted once).
    first = np.clip(np.ceil(lo - 0.5), 0, rows).astype(np.int64)
    last = np.clip(np.ceil(hi - 0.5), 0, rows).astype(np.int64)
    counts = last - first
    if counts.sum() == 0:
        return np.zeros(shape, bool)
    edge_idx = np.repeat(np.arange(len(counts)), counts)
    row = first[edge_idx] + (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))
    yc = row + 0.5
    t = (yc - ya[edge_idx]) / (yb[edge_idx] - ya[edge_idx])
    xc = xa[edge_idx] + t * (xb[edge_idx] - xa[edge_idx])
    order = np.lexsort((xc, row))
    row, xc = row[order], xc[order]
    # Crossings pair up within each row: fill centres x + 0.5 in [x_start, x_end).
    start_x, end_x, r = xc[0::2], xc[1::2], row[0::2]
    start = np.clip(np.ceil(start_x - 0.5), 0, cols).astype(np.int64)
    end = np.clip(np.ceil(end_x - 0.5), 0, cols).astype(np.int64)
    diff = np.zeros((rows, cols + 1), np.int32)
    np.add.at(diff, (r, start), 1)
    np.add.at(diff, (r, end), -1)
    return np.cumsum(diff[:, :cols], axis=1) > 0


# --------------------------------------------------------------------------------------------------------------------
# The geometry of a classifier applied to an image.
#
# Pixel convention: full-resolution pixel (x, y) is the square [x, x + 1) × [y, y + 1), its centre at (x + 0.5,
# y + 0.5). Map pixel (c, r) of a classifier at downsample ds is the square [c·ds, (c + 1)·ds) × [r·ds, (r + 1)·ds)
# in full-resolution coordinates, its centre at ((c + 0.5)·ds, (r + 0.5)·ds). A point belongs to a shape when it lies
# inside it (half-open on the edges, so a point on an edge shared by two shapes belongs to exactly one of them).
# --------------------------------------------------------------------------------------------------------------------

EPS = 1e-9
"""Tolerance of the floor/ceil of a coordinate that should be a whole number (1001 / 1.4 is 715.0000000000001)."""


def map_length(full: int, downsample: float) -> int:
    """Map pixels along an axis of ``full`` full-resolution pixels: ceil, so every full-resolution pixel is covered."""
    return max(1, math.ceil(full / downsample - EPS))


def _axis_weights(start: float, pixel: float, index0: int, n: int, level_ds: float,
                  level_len: float) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Box-filter weights along one axis: output pixel i covers [start + (index0 + i)·pixel, … + pixel) in full-
    resolution coordinates, i.e. [a, b) in level-pixel coordinates, clipped to the image [0, level_len). Returns
    (first level pixel per output pixel (n,), weights (n, m) over the m level pixels from there, k0, k1): the level
    pixels [k0, k1) to read. Weights of an output pixel outside the image are all 0."""
    j = np.arange(index0, index0 + n, dtype=np.float64)
    a = (start + j * pixel) / level_ds
    b = (start + (j + 1) * pixel) / level_ds
    a = np.clip(a, 0.0, level_len)
    b = np.clip(b, 0.0, level_len)
    length = b - a
    first = np.floor(a + EPS).astype(np.int64)
    last = np.maximum(np.ceil(b - EPS).astype(np.int64), first + 1)
    # The most level pixels one output pixel spans (extra terms carry weight 0 and add exactly nothing).
    m = int((last - first).max())
    k = first[:, None] + np.arange(m)[None, :]
    w = np.minimum(b[:, None], k + 1.0) - np.maximum(a[:, None], k.astype(np.float64))
    w = np.clip(w, 0.0, None)
    w[w < EPS] = 0.0
    ok = length > EPS
    w[ok] /= length[ok, None]
    w[~ok] = 0.0
    return first, w.astype(np.float32), int(first.min()), int((first + m).max())


def _resample_axis(data: np.ndarray, axis: int, first: np.ndarray, w: np.ndarray, k0: int) -> np.ndarray:
    """Σ_m w[i, m] · data[first[i] + m] along ``axis`` (0 or 1) of (H, W, C) float32 data whose index 0 is level
    pixel k0; summed in the same order for every output pixel, so the result of one output pixel does not depend on
    which other pixels are computed with it."""
    idx = first - k0
    out = None
    for m in range(w.shape[1]):
        take = np.take(data, idx + m, axis=axis)
        weight = w[:, m].reshape((-1, 1, 1) if axis == 0 else (1, -1, 1))
        out = take * weight if out is None else out + take * weight
    assert out is not None
    return out


def read_pixels(source: ImageSource, x0: float, y0: float, pixel: float, col0: int, row0: int,
                cols: int, rows: int, channels: Sequence[int] | None = None) -> np.ndarray:
    """The exact read of a grid of output pixels: output pixel (i, j) is the square
    [x0 + (col0 + j)·pixel, … + pixel) × [y0 + (row0 + i)·pixel, … + pixel) of the full-resolution image, and its
    value is the mean of the image over that square (box filter; only the part inside the image counts, 0 wholly
    outside). One region is read once from the finest pyramid level not finer than needed (the coarsest level with
    downsample ≤ ``pixel``) and resampled. A pixel's value depends only on its square, never on the rest of the
    grid, so tiles of any size or position give the same pixels. Where the squares are the level's own pixels the
    read is returned as it is (the image's dtype); otherwise float32, (rows, cols, C) of the ``channels`` asked
    for (all by default)."""
    index = max(i for i, d in enumerate(source.downsamples) if i == 0 or d <= pixel * (1 + 1e-6))
    level_ds = float(source.downsamples[index])
    lw, lh = source.width / level_ds, source.height / level_ds
    fx, wx, kx0, kx1 = _axis_weights(x0, pixel, col0, cols, level_ds, lw)
    fy, wy, ky0, ky1 = _axis_weights(y0, pixel, row0, rows, level_ds, lh)
    read = _read_level(source, level_ds, kx0, ky0, kx1 - kx0, ky1 - ky0)
    if channels is not None and list(channels) != list(range(read.shape[2])):
        read = read[..., list(channels)]
    if _is_selection(wx) and _is_selection(wy):
        # Each output pixel is one level pixel (or outside the image, where the read is 0 already).
        outside_x, outside_y = wx[:, 0] == 0, wy[:, 0] == 0
        if not outside_x.any() and not outside_y.any() and np.all(np.diff(fx) == 1) and np.all(np.diff(fy) == 1):
            return read[fy[0] - ky0: fy[0] - ky0 + rows, fx[0] - kx0: fx[0] - kx0 + cols]
        out = read[fy - ky0][:, fx - kx0]
        out[outside_y] = 0
        out[:, outside_x] = 0
        return out
    data = read.astype(np.float32)
    data = _resample_axis(data, 1, fx, wx, kx0)
    return _resample_axis(data, 0, fy, wy, ky0)


def _is_selection(w: np.ndarray) -> bool:
    return bool(np.all(w[:, 1:] == 0) and np.all((w[:, 0] == 0) | (w[:, 0] == 1)))


def _read_level(source: ImageSource, level_ds: float, kx: int, ky: int, kw: int, kh: int) -> np.ndarray:
    """Level pixels [kx, kx + kw) × [ky, ky + kh) of the pyramid level at ``level_ds`` (0 outside the image)."""
    x, y = int(round(kx * level_ds)), int(round(ky * level_ds))
    w, h = int(round((kx + kw) * level_ds)) - x, int(round((ky + kh) * level_ds)) - y
    arr = source.read_region(level_ds, x, y, max(w, 1), max(h, 1))
    if arr.shape[:2] == (kh, kw):
        return arr
    out = np.zeros((kh, kw, arr.shape[2]), arr.dtype)
    out[: min(kh, arr.shape[0]), : min(kw, arr.shape[1])] = arr[:kh, :kw]
    return out


def _flat_line_buffer(part: shapely.Geometry, half_width: float) -> shapely.Geometry:
    return shapely.buffer(part, half_width, cap_style="flat", join_style="round")


@dataclass(frozen=True)
class Frame:
    """The geometry of a classifier at ``downsample`` applied to an image of ``width`` × ``height`` full-resolution
    pixels: the transforms between full-resolution and map coordinates, the map's size, the exact read of any tile,
    the rasterisation of labels and the counting of areas, all under the pixel convention above. Training labels,
    inference reads, measurements and objects all go through here."""

    width: int
    height: int
    downsample: float

    @property
    def map_width(self) -> int:
        return map_length(self.width, self.downsample)

    @property
    def map_height(self) -> int:
        return map_length(self.height, self.downsample)

    @property
    def map_size(self) -> tuple[int, int]:
        """(width, height) of the class map: ceil, so every full-resolution pixel lies in a map pixel."""
        return self.map_width, self.map_height

    def to_map(self, geom: shapely.Geometry) -> shapely.Geometry:
        """A full-resolution geometry in map coordinates."""
        return shapely.transform(geom, lambda xy: xy / self.downsample)

    def to_full(self, geom: shapely.Geometry) -> shapely.Geometry:
        """A map-coordinate geometry in full-resolution coordinates."""
        return shapely.transform(geom, lambda xy: xy * self.downsample)

    def image_box(self) -> shapely.Polygon:
        """The image in full-resolution coordinates; nothing written reaches past it."""
        return shapely.box(0, 0, self.width, self.height)

    def map_window(self, geom: shapely.Geometry) -> tuple[int, int, int, int]:
        """Map rows and columns [r0, r1) × [c0, c1) that hold every map pixel whose square touches ``geom``."""
        minx, miny, maxx, maxy = geom.bounds
        ds = self.downsample
        return (math.floor(miny / ds), math.ceil(maxy / ds), math.floor(minx / ds), math.ceil(maxx / ds))

    def read(self, source: ImageSource, col: int, row: int, cols: int, rows: int) -> np.ndarray:
        """Map pixels [col, col + cols) × [row, row + rows) of the image (see ``read_pixels``)."""
        return read_pixels(source, 0.0, 0.0, self.downsample, col, row, cols, rows)

    def labels(self, shapes: Sequence, class_index: dict[str, int], col: int, row: int, size: tuple[int, int],
               stroke_width: float) -> np.ndarray:
        """Label mask (rows, cols) of the map pixels from (col, row) (see ``rasterize``)."""
        ds = self.downsample
        return rasterize(shapes, class_index, col * ds, row * ds, ds, size, stroke_width)

    def full_rows(self, r0: int, r1: int) -> tuple[int, int]:
        """Full-resolution rows whose centres lie in map rows [r0, r1)."""
        ds = self.downsample
        return max(0, math.ceil(r0 * ds - 0.5 - EPS)), max(0, math.ceil(r1 * ds - 0.5 - EPS))

    def count_classes(self, geom: shapely.Geometry, strip: np.ndarray, y0: int, n_classes: int,
                      max_pixels: int = 1 << 22) -> np.ndarray:
        """Full-resolution pixels per class inside ``geom`` among those whose centres lie in the strip's map rows
        [y0, y0 + rows): each full-resolution pixel whose centre is inside ``geom`` takes the class of the map pixel
        that holds its centre. Summed over all strips this is the area of each class in ``geom`` at full
        resolution, whatever the downsample."""
        rows, width = strip.shape
        ds = self.downsample
        counts = np.zeros(n_classes, np.int64)
        minx, miny, maxx, maxy = geom.bounds
        fy0, fy1 = self.full_rows(y0, y0 + rows)
        fy0 = max(fy0, math.floor(miny))
        fy1 = min(fy1, math.ceil(maxy), self.height)
        fx0 = max(0, math.floor(minx))
        fx1 = min(math.ceil(maxx), self.width, math.ceil(width * ds - 0.5 - EPS))
        if fy1 <= fy0 or fx1 <= fx0:
            return counts
        cols = np.floor((np.arange(fx0, fx1) + 0.5) / ds + EPS).astype(np.int64)
        step = max(1, max_pixels // (fx1 - fx0))
        for a in range(fy0, fy1, step):
            b = min(fy1, a + step)
            mask = polygon_mask(geom, fx0, a, 1.0, (b - a, fx1 - fx0))
            if not mask.any():
                continue
            rws = np.floor((np.arange(a, b) + 0.5) / ds + EPS).astype(np.int64) - y0
            values = strip[rws[:, None], cols[None, :]][mask]
            counts += np.bincount(values, minlength=256)[:n_classes]
        return counts


def _shape_order(shape: LabelShape) -> tuple[int, float]:
    geom = shape.geometry
    if shape.kind == "area":
        return (0, -geom.area)
    if shape.kind == "line":
        return (1, -geom.length)
    return (2, 0.0)


def _parts(geom: shapely.Geometry) -> list[shapely.Geometry]:
    """Single-part geometries, also from collections of multi-part ones."""
    parts = list(shapely.get_parts(geom))
    if any(hasattr(p, "geoms") for p in parts):
        return [q for p in parts for q in _parts(p)]
    return parts


def stroke_polygon(part: shapely.Geometry, width_full: float) -> shapely.Geometry:
    """The area a line or point labels: a line's buffer of ``width_full`` full-resolution pixels with flat caps
    (no reach past its ends), a point's disc of that diameter."""
    if part.geom_type == "Point":
        return shapely.buffer(part, width_full / 2, quad_segs=16)
    return _flat_line_buffer(part, width_full / 2)


def rasterize(
    shapes: Sequence[LabelShape],
    class_index: dict[str, int],
    x0: float,
    y0: float,
    downsample: float,
    size: tuple[int, int],
    stroke_width: float,
    unlabelled: int = 255,
) -> np.ndarray:
    """Label mask (rows, cols) uint8 of the output pixels whose squares start at (x0, y0) with side ``downsample``
    (full-resolution coordinates): a pixel takes the class of a shape that holds its centre. Areas are themselves;
    a line is its flat-capped buffer ``stroke_width`` output pixels wide, a point a disc of that diameter (at least
    the pixel that holds it), filled by the same centre rule. Where shapes overlap the smaller one wins: areas from
    the largest to the smallest, then lines (longest first), then points."""
    rows, cols = size
    mask = np.full((rows, cols), unlabelled, np.uint8)
    width_full = max(stroke_width, 1.0) * downsample
    for shape in sorted((s for s in shapes if s.class_name in class_index), key=_shape_order):
        value = class_index[shape.class_name]  # type: ignore[index]
        for part in _parts(shape.geometry):
            if part.is_empty:
                continue
            if part.geom_type == "Polygon":
                mask[polygon_mask(part, x0, y0, downsample, (rows, cols))] = value
            elif part.geom_type in ("LineString", "LinearRing", "Point"):
                filled = polygon_mask(stroke_polygon(part, width_full), x0, y0, downsample, (rows, cols))
                if part.geom_type == "Point" and not filled.any():
                    c = math.floor((part.x - x0) / downsample)
                    r = math.floor((part.y - y0) / downsample)
                    if 0 <= r < rows and 0 <= c < cols:
                        filled[r, c] = True
                mask[filled] = value
    return mask
