"""Exact rasterisation of polygons: a pixel belongs to a polygon when its centre lies inside it.

Used for training labels and for measurements, so an area counted here is the area QuPath users expect from the
shape they drew, to the pixel.
"""

from __future__ import annotations

import numpy as np
import shapely


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
