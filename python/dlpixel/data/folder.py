"""Folder projects: a folder of images, each with QuPath-exported GeoJSON annotations beside it, and the result
files written back beside them (``results/<classifier>/``)."""

from __future__ import annotations

import csv
import dataclasses
import io
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..config import NAME_PATTERN
from ..errors import ConfigError, DataError
from ._io import make_dirs_under, write_text_atomic
from .base import LabelShape, ProjectImage
from .geojson import ObjectType, read_geojson, write_geojson
from .images import FLAT_SUFFIXES, TIFF_SUFFIXES, FileImageSource, write_ome_tiff

__all__ = [
    "FileImageSource",
    "FolderImage",
    "FolderProject",
    "IMAGE_SUFFIXES",
    "image_stem",
    "open_folder_project",
    "read_geojson",
    "write_geojson",
    "write_ome_tiff",
]

IMAGE_SUFFIXES = TIFF_SUFFIXES + FLAT_SUFFIXES
_ID_NAMESPACE = uuid.UUID("6f1c2a4e-5b0d-4c39-9a57-3f1e2d7c8b90")


def image_stem(name: str) -> str:
    """The file name without its image extension (``x.ome.tif`` -> ``x``), used to name annotation and result files."""
    lower = name.lower()
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _is_image(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.name.lower().endswith(IMAGE_SUFFIXES)


class FolderImage:
    """One image file of a folder project and its ``<name>.geojson`` or ``<stem>.geojson`` annotations."""

    def __init__(self, path: Path, root: Path) -> None:
        self.path = path
        self.root = root
        self.name = path.name
        self.stem = image_stem(path.name)
        candidates = (path.with_name(f"{path.name}.geojson"), path.with_name(f"{self.stem}.geojson"))
        self.geojson_path: Path | None = next((p for p in candidates if p.is_file()), None)
        self._annotations: list[LabelShape] | None = None

    def open(self) -> FileImageSource:
        """The image's pixels; close the source (or use it in a ``with``) when done."""
        return FileImageSource(self.path)

    def annotations(self) -> list[LabelShape]:
        """Every annotation of the image, classified or not; [] when it has no GeoJSON file.

        Annotations without an id get one derived from the file and the feature's position, stable across reads,
        so that measurements can be keyed by it.
        """
        if self._annotations is None:
            if self.geojson_path is None:
                self._annotations = []
            else:
                shapes = read_geojson(self.geojson_path)
                # A missing or repeated id gets one of its own, so that each annotation gets its own measurements.
                seen: set[str] = set()
                self._annotations = []
                for i, s in enumerate(shapes):
                    if s.id is None or s.id in seen:
                        s = dataclasses.replace(s, id=self._derived_id(i))
                    seen.add(s.id)  # type: ignore[arg-type]
                    self._annotations.append(s)
        return list(self._annotations)

    def _derived_id(self, index: int) -> str:
        return str(uuid.uuid5(_ID_NAMESPACE, f"{self.name}/{index}"))

    def results_dir(self, classifier: str) -> Path:
        """``<root>/results/<classifier>/``, where this image's results for that classifier go."""
        if not NAME_PATTERN.match(classifier):
            raise ConfigError(f"classifier name {classifier!r} may use only letters, digits, '_' and '-'")
        return self.root / "results" / classifier

    def write_results(
        self,
        classifier: str,
        *,
        objects: Sequence[LabelShape] | None = None,
        object_type: ObjectType = "detection",
        measurements: Mapping[str, Mapping[str, float]] | None = None,
    ) -> list[Path]:
        """Write a classifier's results for this image and return the files written.

        ``objects`` go to ``<stem>.objects.geojson``. ``measurements`` (keyed by annotation id) are merged into the
        image's annotations, written to ``<stem>.annotations.geojson``, and tabulated in ``<stem>.measurements.csv``.
        """
        out = self.results_dir(classifier)
        make_dirs_under(self.root, out)
        written: list[Path] = []
        if objects is not None:
            written.append(write_geojson(out / f"{self.stem}.objects.geojson", list(objects), object_type))
        if measurements is not None:
            annotations = self.annotations()
            unknown = sorted(set(measurements) - {a.id for a in annotations})
            if unknown:
                raise DataError(
                    f"{self.name}: measurements name annotation ids not in {self.geojson_path or 'its annotations'} "
                    f"({', '.join(unknown[:3])}); re-read the annotations before measuring"
                )
            merged = [
                dataclasses.replace(a, measurements={**a.measurements, **measurements.get(a.id or "", {})})
                for a in annotations
            ]
            written.append(write_geojson(out / f"{self.stem}.annotations.geojson", merged, "annotation"))
            table = _csv(self.name, annotations, measurements)
            written.append(write_text_atomic(out / f"{self.stem}.measurements.csv", table))
        return written

    def __repr__(self) -> str:
        return f"FolderImage({str(self.path)!r}, annotations={str(self.geojson_path) if self.geojson_path else None})"


def _csv(image: str, annotations: Sequence[LabelShape], measurements: Mapping[str, Mapping[str, float]]) -> str:
    """One row per annotation; the first column names the image, so tables of several images can be joined."""
    columns: dict[str, None] = {}
    for values in measurements.values():
        columns.update(dict.fromkeys(values))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "id", "name", "class", *columns])
    for a in annotations:
        values = measurements.get(a.id or "", {})
        row = [image, a.id or "", a.name or "", a.class_name or ""]
        writer.writerow(row + [repr(float(values[c])) if c in values else "" for c in columns])
    return buffer.getvalue()


class FolderProject:
    """A ``Project`` over a folder of image files with GeoJSON annotations beside them."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(
                f"{self.root}: project folder not found; give a folder of images (.tif, .ome.tif, .png, ...) "
                "with GeoJSON annotations, or a QuPath project"
            )
        paths = sorted((p for p in self.root.iterdir() if _is_image(p)), key=lambda p: p.name)
        if not paths:
            raise DataError(
                f"{self.root}: no images found; expected files ending in {', '.join(IMAGE_SUFFIXES)} "
                "each with <name>.geojson or <stem>.geojson annotations beside it"
            )
        self._images = [FolderImage(p, self.root) for p in paths]
        stems: dict[str, str] = {}
        for image in self._images:
            key = image.stem.lower()
            if key in stems:
                raise DataError(
                    f"{self.root}: images {stems[key]} and {image.name} share the name {image.stem!r}, so their "
                    "annotations and results would collide; rename one of them"
                )
            stems[key] = image.name

    def images(self) -> list[ProjectImage]:
        """The project's images (each a ``FolderImage``), sorted by file name."""
        return list(self._images)

    def image(self, name: str) -> FolderImage:
        """The image with this file name (or stem)."""
        for image in self._images:
            if name in (image.name, image.stem):
                return image
        raise DataError(
            f"{self.root}: no image named {name!r}; choose one of {', '.join(i.name for i in self._images)}"
        )

    def class_colors(self) -> dict[str, tuple[int, int, int]]:
        """The first colour given to each class in the images' annotations."""
        colors: dict[str, tuple[int, int, int]] = {}
        for image in self._images:
            for shape in image.annotations():
                if shape.class_name is not None and shape.color is not None:
                    colors.setdefault(shape.class_name, shape.color)
        return colors

    def close(self) -> None:
        """Nothing stays open between calls; present for the ``Project`` protocol."""

    def __enter__(self) -> FolderProject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FolderProject({str(self.root)!r}, {len(self._images)} images)"


def open_folder_project(path: str | Path) -> FolderProject:
    """Open a folder of images with GeoJSON annotations as a ``Project``."""
    return FolderProject(path)
