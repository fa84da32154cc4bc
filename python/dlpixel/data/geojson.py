"""QuPath's GeoJSON export format, read into ``LabelShape``s and written back so that QuPath can import it."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import shapely
import shapely.geometry

from ..errors import DataError
from ._io import write_text_atomic
from .base import LabelShape, ObjectType

GEOMETRY_TYPES = frozenset(
    {"Polygon", "MultiPolygon", "LineString", "MultiLineString", "Point", "MultiPoint", "GeometryCollection"}
)


def read_geojson(path: str | Path, *, object_types: Collection[str] = ("annotation",)) -> list[LabelShape]:
    """The objects in a QuPath GeoJSON export (FeatureCollection, list of Features, or one Feature).

    Only features whose ``objectType`` is in ``object_types`` (or that have none) are returned, so detections and
    cells are skipped by default; unclassified ones are kept with ``class_name=None``, because callers decide
    whether they matter.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: GeoJSON file not found; export the annotations from QuPath as GeoJSON") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); export the annotations from QuPath as GeoJSON") from exc
    except RecursionError:
        raise DataError(f"{path}: nested too deeply to be GeoJSON; export the annotations from QuPath again") from None
    wanted = {t.lower() for t in object_types}
    shapes = []
    for index, feature in enumerate(_features(data, path)):
        shape = _parse_feature(feature, index, path, wanted)
        if shape is not None:
            shapes.append(shape)
    return shapes


def _features(data: Any, path: Path) -> list[Any]:
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        kind = data.get("type")
        if kind == "FeatureCollection" and isinstance(data.get("features"), list):
            return data["features"]
        if kind == "Feature":
            return [data]
        if kind in GEOMETRY_TYPES:
            return [{"type": "Feature", "geometry": data, "properties": {}}]
    raise DataError(
        f"{path}: not GeoJSON (expected a FeatureCollection or a list of Features); export the annotations from "
        "QuPath with File > Export objects as GeoJSON"
    )


def _parse_feature(feature: Any, index: int, path: Path, wanted: set[str]) -> LabelShape | None:
    where = f"{path}: feature {index}"
    if not isinstance(feature, dict) or "geometry" not in feature:
        raise DataError(f"{where} is not a GeoJSON Feature with a geometry; fix or remove it")
    props = feature.get("properties") or {}
    if not isinstance(props, dict):
        raise DataError(f"{where}: 'properties' must be an object; fix or remove the feature")
    object_type = props.get("objectType")
    if object_type is not None and str(object_type).lower() not in wanted:
        return None
    geometry = _parse_geometry(feature["geometry"], where)
    class_name, color = _parse_classification(props.get("classification"), where)
    raw_id = feature.get("id", props.get("id"))
    name = props.get("name")
    return LabelShape(
        class_name=class_name,
        geometry=geometry,
        kind=LabelShape.kind_of(geometry),
        color=color,
        id=None if raw_id is None else str(raw_id),
        name=None if name is None else str(name),
        measurements=_parse_measurements(props.get("measurements"), where),
        plane=_parse_plane(feature["geometry"], where),
    )


def _parse_plane(raw: Any, where: str) -> tuple[int, int]:
    """(z, t) of QuPath's ``"plane": {"c", "z", "t"}`` inside the geometry, written only off the default plane;
    (0, 0) without it."""
    plane = raw.get("plane") if isinstance(raw, dict) else None
    if plane is None:
        return (0, 0)
    try:
        z, t = int(plane.get("z", 0)), int(plane.get("t", 0))
    except (AttributeError, TypeError, ValueError):
        raise DataError(f"{where}: 'plane' must be an object with whole numbers z and t; fix or remove it") from None
    if z < 0 or t < 0:
        raise DataError(f"{where}: plane z={z}, t={t} is negative; fix or remove the feature")
    return (z, t)


def _parse_geometry(raw: Any, where: str) -> shapely.Geometry:
    if not isinstance(raw, dict) or raw.get("type") not in GEOMETRY_TYPES:
        kind = raw.get("type") if isinstance(raw, dict) else type(raw).__name__
        raise DataError(f"{where}: unsupported or missing geometry ({kind}); fix or remove the feature")
    try:
        geometry = shapely.geometry.shape(raw)
    except Exception as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise DataError(f"{where}: invalid {raw['type']} geometry ({reason}); fix or remove the feature") from exc
    if geometry.is_empty:
        raise DataError(f"{where}: empty {raw['type']} geometry; fix or remove the feature")
    if not np.isfinite(shapely.get_coordinates(geometry)).all():
        raise DataError(f"{where}: NaN or infinite coordinates in the {raw['type']}; fix or remove the feature")
    return geometry


def _parse_classification(raw: Any, where: str) -> tuple[str | None, tuple[int, int, int] | None]:
    if raw is None:
        return None, None
    if isinstance(raw, str):
        return raw, None
    if not isinstance(raw, dict):
        raise DataError(f"{where}: 'classification' must be an object with a name; fix or remove the feature")
    name = raw.get("name")
    if name is None:
        names = raw.get("names")
        name = ": ".join(str(n) for n in names) if isinstance(names, list) and names else None
    color: tuple[int, int, int] | None = None
    if isinstance(raw.get("color"), (list, tuple)) and len(raw["color"]) >= 3:
        try:
            r, g, b = (int(c) for c in raw["color"][:3])
        except (TypeError, ValueError):
            raise DataError(f"{where}: classification colour must be [r, g, b]; fix or remove it") from None
        color = (r, g, b)
    elif isinstance(raw.get("colorRGB"), int):
        packed = raw["colorRGB"] & 0xFFFFFF
        color = ((packed >> 16) & 0xFF, (packed >> 8) & 0xFF, packed & 0xFF)
    return (None if name is None else str(name)), color


def _parse_measurements(raw: Any, where: str) -> dict[str, float]:
    if raw is None:
        return {}
    if isinstance(raw, dict):
        items = list(raw.items())
    elif isinstance(raw, list):
        items = [(m.get("name"), m.get("value")) for m in raw if isinstance(m, dict)]
    else:
        raise DataError(f"{where}: 'measurements' must be an object or a list of {{name, value}}; fix or remove it")
    measurements = {}
    for key, value in items:
        if key is None:
            continue
        try:
            measurements[str(key)] = float(value) if value is not None else math.nan
        except (TypeError, ValueError):
            continue
    return measurements


def shape_to_feature(shape: LabelShape, object_type: ObjectType = "annotation") -> dict[str, Any]:
    """One ``LabelShape`` as a QuPath GeoJSON Feature (a new UUID when the shape has no id)."""
    props: dict[str, Any] = {"objectType": object_type}
    if shape.class_name is not None:
        classification: dict[str, Any] = {"name": shape.class_name}
        if shape.color is not None:
            classification["color"] = [int(c) for c in shape.color]
        props["classification"] = classification
    if shape.name is not None:
        props["name"] = shape.name
    if shape.measurements:
        props["measurements"] = {k: float(v) for k, v in shape.measurements.items()}
    geometry = dict(shapely.geometry.mapping(shape.geometry))
    if tuple(shape.plane) != (0, 0):
        geometry["plane"] = {"c": -1, "z": int(shape.plane[0]), "t": int(shape.plane[1])}  # as QuPath writes it
    return {
        "type": "Feature",
        "id": shape.id if shape.id is not None else str(uuid.uuid4()),
        "geometry": geometry,
        "properties": props,
    }


def write_geojson(path: str | Path, shapes: Sequence[LabelShape], object_type: ObjectType = "annotation") -> Path:
    """Write shapes as a QuPath-importable FeatureCollection (atomically) and return the path."""
    if object_type not in ("annotation", "detection"):
        raise ValueError(f"object_type must be 'annotation' or 'detection', got {object_type!r}")
    collection = {"type": "FeatureCollection", "features": [shape_to_feature(s, object_type) for s in shapes]}
    return write_text_atomic(Path(path), json.dumps(collection, separators=(",", ":")))
