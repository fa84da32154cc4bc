"""Results back into QuPath: objects and measurements of one classifier, replacing its earlier ones, saved with a
backup of ``data.qpdata`` and restored when anything fails.

How a classifier's results are recognised on a rerun:
- every object it creates is named ``dlpixel: <classifier>`` (visible in QuPath's object list);
- every measurement it writes is named ``<classifier>: <name>``.
Writing objects first removes the objects with that name; writing measurements first removes the measurements with
that prefix from the annotations that get new ones. So a rerun replaces the results of its own kind and keeps the
other kind, and measuring a selection leaves the other annotations' results alone.
"""

from __future__ import annotations

import logging
import os
import shutil
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jpype
import shapely

from ..data.base import LabelShape, ObjectType, unique_ids
from ..errors import ConfigError, DataError
from .jvm import java_error, runtime

if TYPE_CHECKING:
    from .project import QuPathImage

log = logging.getLogger(__name__)

OBJECT_TYPES = ("detection", "annotation")


def object_marker(classifier: str) -> str:
    """The name given to every object ``classifier`` creates."""
    return f"dlpixel: {classifier}"


def measurement_prefix(classifier: str) -> str:
    """The prefix of every measurement ``classifier`` writes."""
    return f"{classifier}: "


def measurement_name(classifier: str, name: str) -> str:
    """``name`` with the classifier's prefix (unchanged when it already has it)."""
    prefix = measurement_prefix(classifier)
    return name if name.startswith(prefix) else prefix + name


def _j(name: str) -> Any:
    return jpype.JClass(name)


def _packed(color: tuple[int, int, int] | None) -> Any:
    if color is None:
        return None
    r, g, b = (int(c) & 255 for c in color)
    return _j("java.lang.Integer").valueOf((r << 16) | (g << 8) | b)


def shapes_to_path_objects(shapes: list[LabelShape], object_type: ObjectType, *, name: str | None = None,
                           classifier: str | None = None) -> list[Any]:
    """LabelShapes as new QuPath objects: shapely -> WKB -> JTS (QuPath's factory) -> ROI, with class and
    measurements (prefixed with the classifier's name when one is given)."""
    if object_type not in OBJECT_TYPES:
        raise ConfigError(f"object type {object_type!r} is not one of {', '.join(OBJECT_TYPES)}")
    shapes = [s for s in shapes if s.geometry is not None and not s.geometry.is_empty]
    if not shapes:
        return []
    GeometryTools = _j("qupath.lib.roi.GeometryTools")
    PathObjects = _j("qupath.lib.objects.PathObjects")
    PathClass = _j("qupath.lib.objects.classes.PathClass")
    ImagePlane = _j("qupath.lib.regions.ImagePlane")
    reader = _j("org.locationtech.jts.io.WKBReader")(GeometryTools.getDefaultFactory())
    create = PathObjects.createDetectionObject if object_type == "detection" else PathObjects.createAnnotationObject
    put = runtime().compat.put_measurement
    JByteArray = jpype.JArray(jpype.JByte)
    out = []
    for shape, wkb in zip(shapes, shapely.to_wkb([s.geometry for s in shapes])):
        plane = ImagePlane.getPlane(int(shape.plane[0]), int(shape.plane[1]))  # the plane it was computed on
        roi = GeometryTools.geometryToROI(reader.read(JByteArray(wkb)), plane)
        pc = PathClass.fromString(shape.class_name, _packed(shape.color)) if shape.class_name else None
        obj = create(roi, pc)
        if name is not None:
            obj.setName(name)
        ml = obj.getMeasurementList()
        for key, value in shape.measurements.items():
            getattr(ml, put)(measurement_name(classifier, key) if classifier else key, float(value))
        ml.close()
        out.append(obj)
    return out


def _remove_previous(hierarchy: Any, classifier: str, *, objects: bool, targets: list[Any]) -> tuple[int, int]:
    """Remove the classifier's objects (when ``objects``) and its earlier measurements on the annotations about to
    get new ones (``targets``; others, outside a selection say, keep theirs), so that writing one kind of output
    leaves the other kind in place; (objects removed, measurements removed)."""
    compat = runtime().compat
    marker = object_marker(classifier)
    prefix = measurement_prefix(classifier)
    all_objects = list(hierarchy.getAllObjects(False))
    ours = [o for o in all_objects if o.getName() is not None and str(o.getName()) == marker]
    if objects and ours:
        hierarchy.removeObjects(_j("java.util.ArrayList")(ours), True)
    removed = 0
    for o in targets:
        ml = o.getMeasurementList()
        names = [n for n in getattr(ml, compat.measurement_names)() if str(n).startswith(prefix)]
        if names:
            getattr(ml, compat.remove_measurements)(jpype.JArray(jpype.JString)(names))
            removed += len(names)
    return (len(ours) if objects else 0), removed


def _apply(image_data: Any, classifier: str, objects: list[LabelShape] | None, object_type: ObjectType,
           measurements: dict[str, dict[str, float]] | None, image_name: str) -> tuple[int, int]:
    hierarchy = image_data.getHierarchy()
    targets = {}
    if measurements:
        annotations = [o for o in hierarchy.getAnnotationObjects() if o.getROI() is not None]
        by_id = dict(zip(unique_ids([str(o.getID().toString()) for o in annotations]), annotations))
        missing = [k for k in measurements if k not in by_id]
        if missing:
            raise DataError(f"image {image_name!r} has no annotation with id {missing[0]}: its objects changed since"
                            " they were read; rerun on the current data")
        targets = {k: by_id[k] for k in measurements}
    new_objects = shapes_to_path_objects(objects or [], object_type, name=object_marker(classifier),
                                         classifier=classifier)
    n_removed, _ = _remove_previous(hierarchy, classifier, objects=objects is not None,
                                    targets=list(targets.values()))
    if new_objects:
        getattr(hierarchy, runtime().compat.add_objects)(_j("java.util.ArrayList")(new_objects))
    put = runtime().compat.put_measurement
    n_values = 0
    for key, values in (measurements or {}).items():
        ml = targets[key].getMeasurementList()
        for name, value in values.items():
            getattr(ml, put)(measurement_name(classifier, name), float(value))
            n_values += 1
        ml.close()
    hierarchy.fireHierarchyChangedEvent(hierarchy)
    log.info("image %r: removed %d earlier objects of %r, added %d %ss and %d measurements", image_name, n_removed,
             classifier, len(new_objects), object_type, n_values)
    return len(new_objects), n_values


BACKUPS_KEPT = 5
"""Backups ``data.qpdata.<time>.bak`` kept per image; older ones are removed after each successful save."""


def backups_of(data: Path) -> list[Path]:
    """The image's backups of ``data.qpdata``, oldest first: dlpixel's ``.bak`` files, then QuPath's own
    ``data.qpdata.bkp`` (what QuPath keeps while it writes), which is the newest when present."""
    ours = sorted(data.parent.glob(f"{data.name}.*.bak"))
    theirs = data.with_name(f"{data.name}.bkp")
    return ours + ([theirs] if theirs.is_file() else [])


def _backup(data: Path, image_name: str) -> Path:
    """Copy data.qpdata to a new backup: under a temporary name first, so a full disk leaves no empty or short
    backup, only a one-line error."""
    backup = data.with_name(f"{data.name}.{datetime.now().strftime('%Y%m%dT%H%M%S%f')}.bak")
    partial = backup.with_name(backup.name + ".partial")
    try:
        shutil.copy2(data, partial)
        os.replace(partial, backup)
    except OSError as err:
        partial.unlink(missing_ok=True)
        raise DataError(f"cannot back up the data of image {image_name!r} to {data.parent} ({err.strerror or err});"
                        " free disk space; nothing was changed") from None
    return backup


def prune_backups(data: Path, keep: int = BACKUPS_KEPT) -> None:
    for old in sorted(data.parent.glob(f"{data.name}.*.bak"))[:-keep]:
        old.unlink(missing_ok=True)
    for stale in data.parent.glob(f"{data.name}.*.bak.partial"):
        stale.unlink(missing_ok=True)


_HEAD = b"\xac\xed\x00\x05"
_TAIL = b"t\x00\x03EOF"


def looks_complete(path: Path) -> bool:
    """Whether a data.qpdata (or a backup) is whole: QuPath writes a Java object stream (magic ``AC ED 00 05``)
    that ends with the string "EOF"; a save that was killed leaves it without that end."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(_HEAD))
            f.seek(0, os.SEEK_END)
            if f.tell() < len(_HEAD) + len(_TAIL):
                return False
            f.seek(-len(_TAIL), os.SEEK_END)
            return head == _HEAD and f.read() == _TAIL
    except OSError:
        return False


def restore_from_backup(data: Path, image_name: str) -> Path | None:
    """Replace an unreadable data.qpdata (a save that was killed leaves it short) with its newest whole backup; the
    bad file is kept beside it as ``data.qpdata.<time>.unreadable``. Returns the backup used, or None when there is
    none."""
    candidates = [b for b in reversed(backups_of(data)) if looks_complete(b)]
    if not candidates:
        return None
    source = candidates[0]
    stamp = datetime.now().strftime('%Y%m%dT%H%M%S%f')
    kept = data.with_name(f"{data.name}.{stamp}.unreadable")
    tmp = data.with_name(f"{data.name}.{stamp}.restoring")
    try:
        shutil.copy2(source, tmp)
        if data.exists():
            os.replace(data, kept)
        os.replace(tmp, data)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise DataError(f"the data of image {image_name!r} ({data}) is unreadable and restoring it from {source} "
                        f"failed ({err.strerror or err}); copy that backup over it by hand") from None
    log.warning("image %r: %s was unreadable (kept as %s); restored it from the backup %s", image_name, data,
                kept.name if kept.exists() else "-", source.name)
    return source


def _save_with_backup(image: QuPathImage, image_data: Any) -> tuple[Path, Path | None]:
    """``entry.saveImageData`` after copying data.qpdata to ``data.qpdata.<time>.bak``; restore it on failure.
    Only the last ``BACKUPS_KEPT`` backups are kept."""
    data = image.data_file
    if data is None:
        raise DataError(f"image {image.name!r} is not stored on the local file system; cannot save its data")
    if not data.parent.parent.parent.is_dir():
        raise DataError(f"the project folder of image {image.name!r} ({data.parent.parent.parent}) no longer exists "
                        "(moved or deleted during the run); nothing was written")
    backup = _backup(data, image.name) if data.exists() else None
    try:
        image.entry.saveImageData(image_data)
    except BaseException as e:
        if backup is not None:
            shutil.copy2(backup, data)
        else:
            data.unlink(missing_ok=True)
        if isinstance(e, jpype.JException):
            raise DataError(f"cannot save image {image.name!r} of {image.project.path}: {java_error(e)}; the"
                            " previous data was restored") from e
        raise
    prune_backups(data)
    return data, backup


def _write(image: QuPathImage, classifier: str, objects: list[LabelShape] | None, object_type: ObjectType,
           measurements: dict[str, dict[str, float]] | None, what: str) -> list[Path]:
    image_data = image.read_image_data()
    _apply(image_data, classifier, objects, object_type, measurements, image.name)
    if image.live:
        log.info("%s written to the image open in QuPath (%r); save it there to keep them", what, image.name)
        return []
    data, backup = _save_with_backup(image, image_data)
    log.warning(
        "%s written to image %r of %s (backup: %s). If QuPath has this image open, reload it (File > Reload data)"
        " before saving it there, or QuPath will overwrite them.", what, image.name, image.project.path,
        backup.name if backup else "none, the image had no data yet")
    return [data]


def write_results(
    image: QuPathImage,
    classifier: str,
    *,
    objects: list[LabelShape] | None = None,
    object_type: ObjectType = "detection",
    measurements: dict[str, dict[str, float]] | None = None,
) -> list[Path]:
    """Write one classifier's results into an image: first remove what this classifier wrote before of the kinds
    given (objects, measurements; the other kind stays), then add
    ``objects`` (as detections or annotations, named ``dlpixel: <classifier>``) and put ``measurements``
    ({annotation id: {name: value}}, names prefixed ``<classifier>: ``) on those annotations. Saves with a backup
    of data.qpdata; returns the data file written (nothing for a live image, whose hierarchy changes in place)."""
    if not isinstance(classifier, str) or not classifier.strip():
        raise ConfigError("a classifier name is needed to write results")
    if object_type not in OBJECT_TYPES:
        raise ConfigError(f"object type {object_type!r} is not one of {', '.join(OBJECT_TYPES)}")
    return _write(image, classifier, objects, object_type, measurements, f"results of classifier {classifier!r}")


def add_annotations(image: QuPathImage, shapes: list[LabelShape]) -> list[Path]:
    """Add plain annotations (unnamed unless the shape has a name), saved with a backup of data.qpdata."""
    image_data = image.read_image_data()
    objs = shapes_to_path_objects(shapes, "annotation")
    for obj, shape in zip(objs, [s for s in shapes if s.geometry is not None and not s.geometry.is_empty]):
        if shape.name:
            obj.setName(shape.name)
    hierarchy = image_data.getHierarchy()
    if objs:
        getattr(hierarchy, runtime().compat.add_objects)(_j("java.util.ArrayList")(objs))
        hierarchy.fireHierarchyChangedEvent(hierarchy)
    if image.live:
        return []
    data, _ = _save_with_backup(image, image_data)
    return [data]
