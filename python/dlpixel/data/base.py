"""What every image source and project offers the rest of dlpixel (QuPath projects and folder projects alike)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import shapely

from ..errors import DataError

ShapeKind = Literal["area", "line", "point"]
# What results are written as, in QuPath and in GeoJSON.
ObjectType = Literal["annotation", "detection"]


@runtime_checkable
class ImageSource(Protocol):
    """A 2D image (one z-slice and timepoint) that can be read region by region at any downsample."""

    name: str
    width: int
    """Full-resolution width in pixels."""
    height: int
    channel_names: list[str]
    dtype: np.dtype
    pixel_size_um: float | None
    """Full-resolution pixel size in µm (None when the image is not calibrated)."""
    downsamples: tuple[float, ...]
    """Downsamples of the stored pyramid levels, 1.0 first."""

    @property
    def n_channels(self) -> int: ...

    def read_region(self, downsample: float, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Pixels of the full-resolution rectangle (x, y, w, h) at ``downsample``, shape
        ``(round(h / downsample), round(w / downsample), C)`` in the image's dtype. Parts outside the image are 0."""
        ...

    def close(self) -> None:
        """Release the files the source holds open."""
        ...


Plane = tuple[int, int]
"""(z, t): one z-slice and timepoint of an image."""


def planes_of(source: ImageSource) -> tuple[int, int]:
    """(number of z-slices, number of timepoints) of a source (1, 1 for a 2D image)."""
    return int(getattr(source, "n_z", 1)), int(getattr(source, "n_t", 1))


def at_plane(source: ImageSource, plane: Plane, image: str = "", owns: bool = False) -> ImageSource:
    """The source reading plane (z, t): itself when it reads that plane already, else a view that shares its files
    (closing the view closes them only with ``owns``). A plane the image lacks is a one-line error naming the
    image."""
    z, t = plane
    n_z, n_t = planes_of(source)
    if not (0 <= z < n_z and 0 <= t < n_t):
        raise DataError(f"image '{image or source.name}' has {n_z} z-slice(s) and {n_t} timepoint(s); an annotation "
                        f"lies on z={z}, t={t}")
    if plane == tuple(getattr(source, "plane", (0, 0))):
        return source
    return source.at_plane(z, t, owns=owns)  # type: ignore[attr-defined]


def by_plane(shapes: Sequence[LabelShape]) -> list[tuple[Plane, list[LabelShape]]]:
    """Shapes grouped by the plane they lie on, the default plane (0, 0) first, then in (z, t) order."""
    groups: dict[Plane, list[LabelShape]] = {}
    for s in shapes:
        groups.setdefault(tuple(s.plane), []).append(s)  # type: ignore[arg-type]
    return sorted(groups.items())


def region_shape(downsample: float, w: int, h: int) -> tuple[int, int]:
    """Output (rows, cols) of ``read_region`` for a request of w × h full-resolution pixels."""
    return max(1, int(round(h / downsample))), max(1, int(round(w / downsample)))


@dataclass(frozen=True)
class LabelShape:
    """An annotation as the rest of the package sees it: a class name (None = unclassified) and a shapely geometry
    in full-resolution pixel coordinates."""

    class_name: str | None
    geometry: shapely.Geometry
    kind: ShapeKind
    color: tuple[int, int, int] | None = None
    id: str | None = None
    name: str | None = None
    measurements: dict[str, float] = field(default_factory=dict, compare=False, hash=False)
    plane: tuple[int, int] = (0, 0)
    """(z, t) of the image plane the shape was drawn on (QuPath's ImagePlane); labels and results stay on it."""

    @staticmethod
    def kind_of(geometry: shapely.Geometry) -> ShapeKind:
        gtype = geometry.geom_type
        if gtype in ("Polygon", "MultiPolygon"):
            return "area"
        if gtype in ("LineString", "MultiLineString", "LinearRing"):
            return "line"
        if gtype in ("Point", "MultiPoint"):
            return "point"
        if gtype == "GeometryCollection":
            kinds = {LabelShape.kind_of(g) for g in geometry.geoms}
            return "area" if "area" in kinds else ("line" if "line" in kinds else "point")
        raise ValueError(f"unsupported geometry type {gtype}")


class ProjectImage(Protocol):
    """One image of a project, with its annotations."""

    name: str

    def open(self) -> ImageSource: ...

    def annotations(self) -> list[LabelShape]:
        """Every annotation of the image, classified or not."""
        ...


class Project(Protocol):
    """A set of images with annotations and a folder that holds ``classifiers/dl/``."""

    root: Path
    """The folder that holds ``classifiers/`` (and ``results/`` for folder projects)."""

    def images(self) -> list[ProjectImage]: ...

    def class_colors(self) -> dict[str, tuple[int, int, int]]:
        """Colours of the project's classes, where known."""
        ...

    def close(self) -> None: ...


def select_images(project: Project, names: Sequence[str] | None) -> list[ProjectImage]:
    """The named images (all of them must exist), or every image when none is named."""
    images = project.images()
    if not names:
        return images
    by_name = {im.name: im for im in images}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise DataError(f"image(s) {missing} are not in the project {project.root}; it has: {sorted(by_name)}")
    return [by_name[n] for n in names]


def unique_ids(ids: Sequence[str]) -> list[str]:
    """The ids of objects in order, a repeated one made unique (``<id>#<position>``), so that two annotations that
    share an id (copied GeoJSON, duplicated objects) each get their own measurements. The same order of the same
    objects always gives the same keys."""
    seen: set[str] = set()
    out = []
    for i, raw in enumerate(ids):
        key = raw if raw not in seen else f"{raw}#{i}"
        seen.add(key)
        out.append(key)
    return out
