"""QuPath projects through JPype: entries as ``ProjectImage``s, their servers as ``ImageSource``s, their annotations as
``LabelShape``s."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import jpype
import numpy as np
import shapely

from ..data.base import LabelShape, unique_ids
from ..errors import DataError
from .jvm import QuPathError, java_error, parse_version, runtime, start_jvm
from .pixels import QuPathImageSource

if TYPE_CHECKING:
    from ..data.base import ObjectType

log = logging.getLogger(__name__)

PROJECT_FILE = "project.qpproj"


def _j(name: str) -> Any:
    return jpype.JClass(name)


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _rgb(packed: Any) -> tuple[int, int, int] | None:
    if packed is None:
        return None
    c = int(packed)
    return (c >> 16) & 255, (c >> 8) & 255, c & 255


def resolve_project_file(path: str | Path) -> Path:
    """``project.qpproj`` from the path to it or to its folder; DataError when neither is a QuPath project."""
    p = Path(path).expanduser()
    qpproj = p / PROJECT_FILE if p.is_dir() else p
    if p.suffix != ".qpproj" and not p.is_dir():
        raise DataError(f"{p} is not a QuPath project: pass a project.qpproj file or the folder that holds it")
    if not qpproj.is_file():
        raise DataError(f"{p} is not a QuPath project: {qpproj} not found")
    try:
        meta = json.loads(qpproj.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{qpproj} is not a QuPath project file: {' '.join(str(e).split())}") from e
    if not isinstance(meta, dict) or "images" not in meta:
        raise DataError(f"{qpproj} is not a QuPath project file: it has no image list")
    version = meta.get("version")
    if isinstance(version, str):
        try:
            written = parse_version(version)
        except QuPathError:
            written = None
        if written is not None and written[:2] >= (0, 8):
            raise DataError(f"{qpproj} was written by QuPath {version}; dlpixel supports projects of QuPath 0.5–0.7")
    return qpproj.resolve()


def _register_server_adapters() -> None:
    """Loading ImageServers registers the JSON adapters that reading project entries needs."""
    _j("qupath.lib.images.servers.ImageServers")


def open_qupath_project(path: str | Path, *, qupath_dir: str | Path | None = None) -> QuPathProject:
    """Open ``project.qpproj`` (or the folder holding it) in the in-process QuPath."""
    qpproj = resolve_project_file(path)
    start_jvm(qupath_dir)
    _register_server_adapters()
    File = _j("java.io.File")
    try:
        jproject = _j("qupath.lib.projects.ProjectIO").loadProject(File(str(qpproj)), _buffered_image())
    except jpype.JException as e:
        raise DataError(f"cannot read QuPath project {qpproj}: {java_error(e)}") from e
    return QuPathProject(jproject)


def create_qupath_project(path: str | Path, *, qupath_dir: str | Path | None = None) -> QuPathProject:
    """A new, empty QuPath project in folder ``path`` (which must be empty or absent)."""
    folder = Path(path).expanduser()
    if folder.suffix == ".qpproj":
        folder = folder.parent
    if folder.exists() and any(folder.iterdir()):
        raise DataError(f"cannot create a QuPath project in {folder}: the folder is not empty")
    folder.mkdir(parents=True, exist_ok=True)
    start_jvm(qupath_dir)
    _register_server_adapters()
    jproject = _j("qupath.lib.projects.Projects").createProject(_j("java.io.File")(str(folder)), _buffered_image())
    project = QuPathProject(jproject)
    project.save()
    return project


def list_images(path: str | Path, *, qupath_dir: str | Path | None = None) -> list[str]:
    """Names of the images of a QuPath project, in project order."""
    project = open_qupath_project(path, qupath_dir=qupath_dir)
    try:
        return project.image_names()
    finally:
        project.close()


def _buffered_image() -> Any:
    return _j("java.awt.image.BufferedImage").class_


class QuPathProject:
    """A QuPath project (``Project``): its root is the project folder, which holds ``classifiers/dl/``."""

    def __init__(self, jproject: Any):
        self._project = jproject
        path = jproject.getPath()
        self.path = Path(str(path)) if path is not None else None
        self.root = self.path.parent if self.path is not None and self.path.suffix == ".qpproj" else self.path

    @classmethod
    def from_java(cls, jproject: Any) -> QuPathProject:
        """Wrap a live ``qupath.lib.projects.Project`` (e.g. QuPath's current project, handed over by Groovy)."""
        return cls(jproject)

    @property
    def java(self) -> Any:
        return self._project

    def images(self) -> list[QuPathImage]:
        return [QuPathImage(self, entry) for entry in self._project.getImageList()]

    def image_names(self) -> list[str]:
        return [str(entry.getImageName()) for entry in self._project.getImageList()]

    def image(self, name: str) -> QuPathImage:
        """The image called ``name``; DataError listing the project's images when there is none."""
        for image in self.images():
            if image.name == name:
                return image
        names = ", ".join(repr(n) for n in self.image_names()) or "none"
        raise DataError(f"no image named {name!r} in QuPath project {self.path}; its images: {names}")

    def select(self, names: Iterable[str] | None) -> list[QuPathImage]:
        """The named images in the given order (all of them when ``names`` is None or empty)."""
        names = list(names or [])
        return [self.image(n) for n in names] if names else self.images()

    def class_colors(self) -> dict[str, tuple[int, int, int]]:
        colors = {}
        for pc in self._project.getPathClasses():
            if pc is not None and pc.getColor() is not None:
                colors[str(pc.toString())] = _rgb(pc.getColor())
        return colors

    def add_image(self, file: str | Path, name: str | None = None) -> QuPathImage:
        """Add an image file to the project (and save the project)."""
        file = Path(file).expanduser().resolve()
        if not file.is_file():
            raise DataError(f"cannot add {file} to QuPath project {self.path}: file not found")
        try:
            server = _j("qupath.lib.images.servers.ImageServers").buildServer(str(file))
            entry = self._project.addImage(server.getBuilder())
        except jpype.JException as e:
            raise DataError(f"QuPath cannot open {file}: {java_error(e)}") from e
        entry.setImageName(name or file.name)
        server.close()
        self.save()
        return QuPathImage(self, entry)

    def save(self) -> None:
        """Write the project file (``Project.syncChanges``)."""
        try:
            self._project.syncChanges()
        except jpype.JException as e:
            raise DataError(f"cannot save QuPath project {self.path}: {java_error(e)}") from e

    def close(self) -> None:
        """Nothing to release: entries open their servers on demand."""

    def __repr__(self) -> str:
        return f"QuPathProject({self.path})"


class QuPathImage:
    """One image of a QuPath project (``ProjectImage``), or a live ``ImageData`` handed over by QuPath."""

    def __init__(self, project: QuPathProject | None, entry: Any | None, image_data: Any | None = None):
        self.project = project
        self._entry = entry
        self._live = image_data
        if entry is not None:
            self.name = str(entry.getImageName())
            self.id = str(entry.getID())
        else:
            server = image_data.getServer()
            self.name = str(server.getMetadata().getName())
            self.id = None

    @classmethod
    def from_image_data(cls, image_data: Any, project: QuPathProject | None = None) -> QuPathImage:
        """Wrap a live ``ImageData`` (QuPath's open image): reads see unsaved objects, writes go to its hierarchy."""
        entry = project.java.getEntry(image_data) if project is not None else None
        image = cls(project, entry, image_data)
        return image

    @property
    def live(self) -> bool:
        """True when this wraps an ImageData open in QuPath (results are not saved to disk by dlpixel)."""
        return self._live is not None

    @property
    def entry(self) -> Any:
        return self._entry

    @property
    def data_file(self) -> Path | None:
        """``data/<id>/data.qpdata`` of the entry."""
        if self._entry is None or self._entry.getEntryPath() is None:
            return None
        return Path(str(self._entry.getEntryPath())) / "data.qpdata"

    def image_files(self) -> list[Path]:
        """Local files the image server reads."""
        files = []
        for uri in self._entry.getURIs() if self._entry is not None else self._live.getServer().getURIs():
            if str(uri.getScheme()) == "file":
                files.append(Path(str(_j("java.nio.file.Paths").get(uri))))
        return files

    def check_files(self) -> None:
        """DataError naming the image and file when the image file has moved."""
        for f in self.image_files():
            if not f.exists():
                where = f" in QuPath project {self.project.path}" if self.project is not None else ""
                raise DataError(
                    f"image {self.name!r}{where}: its file {f} is missing (moved or deleted); move it back or relink"
                    " it in QuPath's project tab"
                )

    def read_image_data(self) -> Any:
        """The entry's ImageData (the live one when wrapping QuPath's open image)."""
        if self._live is not None:
            return self._live
        self.check_files()
        return self._read_data(self._entry.readImageData, "image")

    def _hierarchy(self) -> Any:
        if self._live is not None:
            return self._live.getHierarchy()
        return self._read_data(self._entry.readHierarchy, "the objects of image")

    def _read_data(self, read: Any, what: str) -> Any:
        """``read()``; when data.qpdata cannot be read (a save that was killed leaves it short), restore it from its
        newest backup (logged) and read again, else name the file and its backups in a one-line error. A short file
        is recognised before QuPath sees it: QuPath's reader loops for ever on one."""
        from .writeback import looks_complete, restore_from_backup

        data = self.data_file
        if data is None or not data.is_file() or looks_complete(data):
            try:
                return read()
            except jpype.JException as e:
                if data is None or not data.is_file():
                    raise DataError(f"cannot read {what} {self.name!r} of {self.project.path}: {java_error(e)}") from e
                reason = java_error(e)
        else:
            reason = "it is cut short: a save was interrupted"
        used = restore_from_backup(data, self.name)
        if used is None:
            raise DataError(f"cannot read {what} {self.name!r}: {data} is unreadable ({reason}) and has no backup; "
                            "restore it from your own backup or delete it to start the image afresh")
        try:
            return read()
        except jpype.JException as e:
            raise DataError(f"cannot read {what} {self.name!r}: {data} is unreadable and so is its newest backup "
                            f"{used.name} ({java_error(e)}); copy an older backup ({data.name}.*.bak) over it") from e

    def open(self) -> QuPathImageSource:
        """An ImageSource over the image's server."""
        if self._live is not None:
            return QuPathImageSource(self._live.getServer(), self.name, owns_server=False)
        self.check_files()
        try:
            server = self._entry.getServerBuilder().build()
        except jpype.JException as e:
            raise DataError(f"QuPath cannot open image {self.name!r}: {java_error(e)}") from e
        return QuPathImageSource(server, self.name)

    def annotations(self) -> list[LabelShape]:
        """Every annotation of the image, classified or not, with geometry through WKB."""
        return path_objects_to_shapes(self._hierarchy().getAnnotationObjects())

    def detections(self) -> list[LabelShape]:
        """Every detection of the image."""
        return path_objects_to_shapes(self._hierarchy().getDetectionObjects())

    def write_results(
        self,
        classifier: str,
        *,
        objects: list[LabelShape] | None = None,
        object_type: ObjectType = "detection",
        measurements: dict[str, dict[str, float]] | None = None,
    ) -> list[Path]:
        """Replace this classifier's earlier objects and measurements with new ones, backing up the data first."""
        from .writeback import write_results

        return write_results(self, classifier, objects=objects, object_type=object_type, measurements=measurements)

    def add_annotations(self, shapes: list[LabelShape]) -> list[Path]:
        """Add plain annotations (drawn elsewhere, e.g. imported GeoJSON), backing up the data first."""
        from .writeback import add_annotations

        return add_annotations(self, shapes)

    def __repr__(self) -> str:
        return f"QuPathImage({self.name!r}, id={self.id})"


def _float32_decimal(value: float) -> float:
    """A float32 measurement as the shortest decimal that is the same float32 (QuPath shows 0.1, not
    0.10000000149011612)."""
    return float(str(np.float32(value)))


def path_objects_to_shapes(path_objects: Any) -> list[LabelShape]:
    """QuPath objects as LabelShapes: geometry through JTS WKB (one batch into shapely), class, colour, id, name,
    measurements.

    The colour is the one QuPath holds for the class: QuPath pre-creates its standard classes (``Stroma`` is
    (150, 200, 150)) and ``PathClass.fromString(name, rgb)`` returns an existing class with its own colour, so a
    colour written with a class may come back different. Detections store measurements as float32 (annotations as
    doubles); theirs come back as the shortest decimal of that float32."""
    objs = [o for o in path_objects if o.getROI() is not None]
    if not objs:
        return []
    writer = _j("org.locationtech.jts.io.WKBWriter")()
    blobs = [bytes(memoryview(writer.write(o.getROI().getGeometry()))) for o in objs]
    geoms = shapely.from_wkb(blobs)
    names_method = runtime().compat.measurement_names
    shapes = []
    keys = unique_ids([str(o.getID().toString()) for o in objs])
    for o, geom, key in zip(objs, geoms, keys):
        pc = o.getPathClass()
        if pc is not None and pc.getName() is None:  # PathClass.NULL_CLASS: unclassified
            pc = None
        ml = o.getMeasurementList()
        measurements = {str(n): float(ml.get(n)) for n in getattr(ml, names_method)()}
        if o.isDetection():
            measurements = {k: _float32_decimal(v) for k, v in measurements.items()}
        shapes.append(LabelShape(
            class_name=_str(pc.toString()) if pc is not None else None,
            geometry=geom,
            kind=LabelShape.kind_of(geom),
            color=_rgb(pc.getColor()) if pc is not None else None,
            id=key,
            name=_str(o.getName()),
            measurements=measurements,
            plane=(int(o.getROI().getZ()), int(o.getROI().getT())),
        ))
    return shapes
