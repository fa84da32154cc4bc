"""What ``apply`` makes of a class map that arrives in horizontal strips, top to bottom, at the classifier's
downsample: exact areas per annotation (``AreaAccumulator``), polygons per class (``ObjectBuilder``) and a
pyramidal OME-TIFF map with a PNG preview (``ClassMapWriter``, in ``outputs_map``). Each holds at most a strip of
raster at a time, never the image.

Conventions shared by all three:
- A strip is ``(rows, W_ds)`` uint8 class indices (``(rows, W_ds, K)`` probabilities for the map writer) whose
  first row is ``y0`` of the class map; map pixel ``(r, c)`` covers full-resolution
  ``[c·ds, (c+1)·ds) × [r·ds, (r+1)·ds)`` (``data.geometry.Frame``). Values ``>= len(class_names)`` (e.g. 255 where
  nothing was computed) belong to no class.
- Areas are counted at full resolution whatever the downsample: each full-resolution pixel whose centre lies inside
  an annotation takes the class of the map pixel that holds its centre. Objects are clipped to the image.
- Measurement names follow QuPath's pixel classifier (``<class> area µm^2``, ``<class> %``). With ``classifier``
  given they carry QuPath's ``<classifier>: `` prefix. QuPath's writer adds that prefix when it is missing and
  keeps it when present; the folder writer writes names as given. So ``apply`` passes ``classifier`` and both
  project kinds get the same names.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import get_args

import numpy as np
import shapely

from ..data.base import LabelShape, ObjectType
from ..data.geometry import Frame
from .outputs_map import ClassMapWriter, write_preview_png

__all__ = [
    "AreaAccumulator",
    "ClassMapWriter",
    "ObjectBuilder",
    "ObjectType",
    "is_ignored_class",
    "measurement_names",
    "write_preview_png",
]

log = logging.getLogger(__name__)

NO_CLASS = 255
"""The value a caller may put where no class was computed (any value >= the number of classes works)."""


def is_ignored_class(name: str | None) -> bool:
    """QuPath's rule for classes left out of percentages: a name ending in ``*`` (such as ``Ignore*``); names
    starting with ``Ignore`` count too, for projects made outside QuPath."""
    return name is None or name.endswith("*") or name.lower().startswith("ignore")


def _prefix(classifier: str | None) -> str:
    return f"{classifier}: " if classifier else ""


def measurement_names(
    class_names: Sequence[str], calibrated: bool, classifier: str | None = None
) -> list[str]:
    """Every measurement name ``AreaAccumulator`` writes per annotation, in its order (CSV columns, docs)."""
    p = _prefix(classifier)
    names: list[str] = []
    for name in class_names:
        names.append(f"{p}{name} area px^2")
        if calibrated:
            names.append(f"{p}{name} area µm^2")
        if not is_ignored_class(name):
            names.append(f"{p}{name} %")
    for total in ("classified", "quantified"):
        names.append(f"{p}Total {total} area px^2")
        if calibrated:
            names.append(f"{p}Total {total} area µm^2")
    return names


DEFAULT_MIN_OBJECT_MAP_PIXELS = 9
"""Without ``min_object_area``, objects smaller than this many map pixels (3 × 3 at the classifier's resolution) are
dropped: a pixel classifier's class map carries isolated specks of one to a few pixels along class borders and in
noise, which as objects would be thousands of one-pixel polygons; anything the classifier can resolve as a region
spans more than a 3 × 3 block."""


def default_min_object_area(downsample: float, pixel_size_um: float | None) -> float:
    """The default smallest object (``DEFAULT_MIN_OBJECT_MAP_PIXELS`` map pixels) in the unit of
    ``min_object_area``: µm² when the image is calibrated, else full-resolution px²."""
    area_px = DEFAULT_MIN_OBJECT_MAP_PIXELS * float(downsample) ** 2
    return area_px * (1.0 if pixel_size_um is None else float(pixel_size_um) ** 2)


def _check_strip(y0: int, strip: np.ndarray, width: int | None, what: str) -> np.ndarray:
    strip = np.asarray(strip)
    if strip.ndim != 2:
        raise ValueError(f"{what} takes class-index strips of shape (rows, width), got {strip.shape}")
    if strip.dtype != np.uint8:
        raise ValueError(f"{what} takes uint8 class indices, got {strip.dtype}")
    if y0 < 0:
        raise ValueError(f"{what}: strip row {y0} is negative")
    if width is not None and strip.shape[1] != width:
        raise ValueError(f"{what}: strip width {strip.shape[1]} differs from the first strip's {width}")
    return strip


def _map_window(geom: shapely.Geometry, downsample: float) -> tuple[int, int, int, int]:
    """Map-pixel rows and columns [r0, r1) × [c0, c1) that hold every pixel whose square touches ``geom``."""
    minx, miny, maxx, maxy = geom.bounds
    return (
        math.floor(miny / downsample),
        math.ceil(maxy / downsample),
        math.floor(minx / downsample),
        math.ceil(maxx / downsample),
    )


class AreaAccumulator:
    """Per annotation and class, the number of full-resolution pixels whose centres lie inside the annotation's own
    shape (holes excluded) and in a map pixel of that class, counted strip by strip: the areas add up to what the
    user drew, to the full-resolution pixel, at any downsample (``Frame.count_classes``)."""

    def __init__(
        self,
        annotations: Sequence[LabelShape],
        class_names: Sequence[str],
        downsample: float,
        pixel_size_um: float | None,
        *,
        classifier: str | None = None,
        image_size: tuple[int, int] | None = None,
    ) -> None:
        if not downsample > 0:
            raise ValueError(f"downsample must be positive, got {downsample}")
        self.class_names = list(class_names)
        self.downsample = float(downsample)
        # Without the image's size, every full-resolution pixel under the map counts.
        self._frame = Frame(*(image_size or (1 << 40, 1 << 40)), self.downsample)
        self.pixel_size_um = pixel_size_um
        self.classifier = classifier
        self._width: int | None = None
        self._shapes: list[LabelShape] = []
        skipped = 0
        for a in annotations:
            if a.kind != "area" or a.geometry is None or a.geometry.is_empty:
                continue
            if a.id is None:
                skipped += 1
                continue
            self._shapes.append(a)
        if skipped:
            log.warning("%d area annotations have no id and get no measurements", skipped)
        self._windows = np.array(
            [_map_window(a.geometry, self.downsample) for a in self._shapes], np.int64
        ).reshape(-1, 4)
        self._counts = np.zeros((len(self._shapes), len(self.class_names)), np.int64)

    def add_strip(self, y0: int, strip: np.ndarray) -> None:
        """Count the classes of a strip (rows ``y0 …``) inside every annotation it crosses."""
        strip = _check_strip(y0, strip, self._width, "AreaAccumulator")
        self._width = strip.shape[1]
        rows, width = strip.shape
        y1 = y0 + rows
        w = self._windows
        hit = np.nonzero((w[:, 0] < y1) & (w[:, 1] > y0) & (w[:, 2] < width) & (w[:, 3] > 0))[0]
        n_classes = len(self.class_names)
        for i in hit:
            self._counts[i] += self._frame.count_classes(self._shapes[i].geometry, strip, y0, n_classes)

    def counts(self) -> dict[str, np.ndarray]:
        """Full-resolution pixel counts per annotation id, one per class."""
        return {a.id or "": self._counts[i].copy() for i, a in enumerate(self._shapes)}

    def result(self) -> dict[str, dict[str, float]]:
        """``{annotation id: {measurement name: value}}``; names as ``measurement_names`` lists them."""
        p = _prefix(self.classifier)
        px_area = 1.0
        um2 = None if self.pixel_size_um is None else float(self.pixel_size_um) ** 2
        ignored = np.array([is_ignored_class(n) for n in self.class_names], bool)
        out: dict[str, dict[str, float]] = {}
        for i, shape in enumerate(self._shapes):
            counts = self._counts[i]
            quantified = int(counts[~ignored].sum())
            values: dict[str, float] = {}
            for k, name in enumerate(self.class_names):
                area = float(counts[k]) * px_area
                values[f"{p}{name} area px^2"] = area
                if um2 is not None:
                    values[f"{p}{name} area µm^2"] = area * um2
                if not ignored[k]:
                    values[f"{p}{name} %"] = 100.0 * counts[k] / quantified if quantified else math.nan
            for total, count in (("classified", int(counts.sum())), ("quantified", quantified)):
                values[f"{p}Total {total} area px^2"] = count * px_area
                if um2 is not None:
                    values[f"{p}Total {total} area µm^2"] = count * px_area * um2
            out[shape.id or ""] = values
        return out


def _runs(strip: np.ndarray, y0: int) -> tuple[np.ndarray, ...]:
    """Maximal runs of one value per row, then runs with the same value, start and end in consecutive rows joined:
    boxes ``(value, x0, y0, x1, y1)`` in map pixels that tile the strip exactly."""
    rows, width = strip.shape
    change = np.ones((rows, width), bool)
    change[:, 1:] = strip[:, 1:] != strip[:, :-1]
    row, start = np.nonzero(change)
    end = np.empty_like(start)
    end[:-1] = start[1:]
    last_in_row = np.ones(len(row), bool)
    last_in_row[:-1] = row[1:] != row[:-1]
    end[last_in_row] = width
    value = strip[row, start].astype(np.int64)
    order = np.lexsort((row, end, start, value))
    value, start, end, row = value[order], start[order], end[order], row[order]
    new = np.ones(len(row), bool)
    new[1:] = (value[1:] != value[:-1]) | (start[1:] != start[:-1]) | (end[1:] != end[:-1]) | (row[1:] != row[:-1] + 1)
    group = np.cumsum(new) - 1
    first = np.nonzero(new)[0]
    top = row[first]
    bottom = np.zeros(len(first), np.int64)
    np.maximum.at(bottom, group, row + 1)
    return value[first], start[first], top + y0, end[first], bottom + y0


def _polygons(geom: shapely.Geometry) -> list[shapely.Polygon]:
    parts = shapely.get_parts(geom)
    out: list[shapely.Polygon] = []
    for part in parts:
        if part.geom_type == "Polygon" and not part.is_empty:
            out.append(part)
        elif part.geom_type in ("MultiPolygon", "GeometryCollection"):
            out += _polygons(part)
    return out


class ObjectBuilder:
    """Polygons per class from a class map arriving in strips, with exact pixel-edge outlines: each strip's runs of
    a class become boxes united per class; pieces that reach a strip border are united across strips at the end,
    the others are finished at once. Every class gets objects, class 0 included."""

    def __init__(
        self,
        class_names: Sequence[str],
        downsample: float,
        min_object_area: float = 0.0,
        min_hole_area: float = 0.0,
        simplify: float = 0.0,
        pixel_size_um: float | None = None,
        clip_to: Sequence[LabelShape] | None = None,
        object_type: ObjectType = "detection",
        *,
        class_colors: Sequence[tuple[int, int, int] | None] | None = None,
        classifier: str | None = None,
        image_size: tuple[int, int] | None = None,
        plane: tuple[int, int] = (0, 0),
    ) -> None:
        if not downsample > 0:
            raise ValueError(f"downsample must be positive, got {downsample}")
        if object_type not in get_args(ObjectType):
            raise ValueError(f"object type {object_type!r} is not one of {', '.join(get_args(ObjectType))}")
        if min(min_object_area, min_hole_area, simplify) < 0:
            raise ValueError("minimum areas and simplification must not be negative")
        if len(class_names) > NO_CLASS:
            raise ValueError(f"at most {NO_CLASS} classes fit a uint8 class map, got {len(class_names)}")
        if class_colors is not None and len(class_colors) != len(class_names):
            raise ValueError(f"{len(class_colors)} colours for {len(class_names)} classes")
        self.class_names = list(class_names)
        self.class_colors = list(class_colors) if class_colors is not None else [None] * len(self.class_names)
        self.downsample = float(downsample)
        self.min_object_area = float(min_object_area)
        self.min_hole_area = float(min_hole_area)
        self.simplify = float(simplify)
        self.pixel_size_um = pixel_size_um
        self.object_type: ObjectType = object_type
        self.classifier = classifier
        self.plane = plane
        """(z, t) the objects lie on."""
        self._image_box = None if image_size is None else Frame(*image_size, self.downsample).image_box()
        """Objects are clipped to the image: the last map row and column may reach past its edge."""
        self._area_scale = self.downsample**2 * (1.0 if pixel_size_um is None else float(pixel_size_um) ** 2)
        """Area in the user's unit (µm² when calibrated, else full-resolution px²) of one map pixel."""
        self._width: int | None = None
        self._border: list[list[shapely.Polygon]] = [[] for _ in self.class_names]
        self._objects: list[LabelShape] = []
        self._clip: list[LabelShape] | None = None
        self._clip_windows = np.zeros((0, 4), np.int64)
        self._clip_tree: shapely.STRtree | None = None
        if clip_to is not None:
            self._clip = []
            for a in clip_to:
                if a.kind != "area" or a.geometry is None or a.geometry.is_empty:
                    continue
                geom = a.geometry if a.geometry.is_valid else shapely.make_valid(a.geometry)
                self._clip.append(LabelShape(a.class_name, geom, "area", a.color, a.id, a.name))
            self._clip_windows = np.array(
                [_map_window(a.geometry, self.downsample) for a in self._clip], np.int64
            ).reshape(-1, 4)
            geoms = [a.geometry for a in self._clip]
            shapely.prepare(geoms)
            self._clip_tree = shapely.STRtree(geoms)

    def add_strip(self, y0: int, strip: np.ndarray) -> None:
        """Turn a strip (rows ``y0 …``) into polygons per class."""
        strip = _check_strip(y0, strip, self._width, "ObjectBuilder")
        self._width = strip.shape[1]
        rows, width = strip.shape
        if self._clip is not None:
            strip = self._inside_clip_windows(y0, strip)
        value, x0, top, x1, bottom = _runs(strip, y0)
        y1 = y0 + rows
        for k in range(len(self.class_names)):
            sel = value == k
            if not sel.any():
                continue
            united = shapely.union_all(shapely.box(x0[sel], top[sel], x1[sel], bottom[sel]))
            for poly in _polygons(united):
                _, miny, _, maxy = poly.bounds
                if miny <= y0 or maxy >= y1:
                    self._border[k].append(poly)
                else:
                    self._finish(k, poly)

    def _inside_clip_windows(self, y0: int, strip: np.ndarray) -> np.ndarray:
        """The strip with pixels outside every clip annotation's bounding box set to no class."""
        rows, width = strip.shape
        keep = np.zeros(strip.shape, bool)
        for r0, r1, c0, c1 in self._clip_windows:
            if r0 < y0 + rows and r1 > y0 and c0 < width and c1 > 0:
                keep[max(r0 - y0, 0) : min(r1 - y0, rows), max(c0, 0) : min(c1, width)] = True
        return np.where(keep, strip, np.uint8(NO_CLASS))

    def _finish(self, k: int, poly: shapely.Polygon) -> None:
        """Fill small holes, scale to full resolution, simplify, clip and keep the parts that are large enough."""
        if self.min_hole_area > 0 and poly.interiors:
            holes = [r for r in poly.interiors if shapely.Polygon(r).area * self._area_scale >= self.min_hole_area]
            poly = shapely.Polygon(poly.exterior, holes)
        if self.min_object_area > 0 and poly.area * self._area_scale < self.min_object_area:
            return
        geom = shapely.transform(poly, lambda xy: xy * self.downsample)
        if self._image_box is not None and not self._image_box.contains(geom):
            geom = shapely.intersection(geom, self._image_box)
        if self.simplify > 0:
            geom = shapely.simplify(geom, self.simplify, preserve_topology=True)
        if self._clip is None or self._clip_tree is None:
            self._emit(k, geom)
            return
        for j in self._clip_tree.query(geom, predicate="intersects"):
            parent = self._clip[int(j)].geometry
            part = geom if parent.contains(geom) else shapely.intersection(geom, parent)
            self._emit(k, part)

    def _emit(self, k: int, geom: shapely.Geometry) -> None:
        full_area = 1.0 if self.pixel_size_um is None else float(self.pixel_size_um) ** 2
        for poly in _polygons(geom):
            area = poly.area
            if area <= 0 or (self.min_object_area > 0 and area * full_area < self.min_object_area):
                continue
            measurements = {f"{_prefix(self.classifier)}Area px^2": area}
            if self.pixel_size_um is not None:
                measurements[f"{_prefix(self.classifier)}Area µm^2"] = area * full_area
            self._objects.append(
                LabelShape(self.class_names[k], poly, "area", self.class_colors[k], measurements=measurements,
                           plane=self.plane)
            )

    def result(self) -> list[LabelShape]:
        """Every object, in full-resolution pixel coordinates; unites the pieces that meet at strip borders."""
        for k, pieces in enumerate(self._border):
            if pieces:
                for poly in _polygons(shapely.union_all(pieces)):
                    self._finish(k, poly)
            self._border[k] = []
        return list(self._objects)
