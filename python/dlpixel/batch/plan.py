"""Plan a batch: one task per image, each with the hashes that decide whether its results are still current.

A task's key is the SHA-256 of
- the image: its file's size, modification time and three 64 KiB samples (start, middle, end), or with
  ``full_hash`` the SHA-256 of the whole file;
- the annotations the results are computed in (scope ``annotations``), as canonical GeoJSON without their
  measurements;
- the classifier: the SHA-256 of every file in its folder;
- the settings that change results (all inference settings but ``batch_size``, ``reader_threads``,
  ``cuda_graphs``, ``row_readers`` and ``map_writer``).
A rerun skips a task whose state is ``done`` with the same key and redoes every other one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..classifiers import store
from ..config import InferenceConfig
from ..data.base import Project, ProjectImage, select_images
from ..data.geojson import shape_to_feature
from ..errors import DataError

SAMPLE = 64 * 1024
SPEED_ONLY = ("batch_size", "reader_threads", "cuda_graphs", "row_readers", "map_writer")
"""Settings that change how fast results come, never what they are: left out of the task key."""
READABLE_SUFFIXES = (".tif", ".tiff", ".ome.tif", ".ome.tiff", ".svs", ".png", ".jpg", ".jpeg")


def _sha(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def file_hash(path: Path, full: bool = False) -> str:
    """``full``: SHA-256 of the file. Otherwise (fast, for slides of gigabytes): size, mtime and three samples."""
    h = hashlib.sha256()
    st = path.stat()
    if full:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return "sha256:" + h.hexdigest()
    h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    with open(path, "rb") as f:
        for offset in sorted({0, max(0, st.st_size // 2 - SAMPLE // 2), max(0, st.st_size - SAMPLE)}):
            f.seek(offset)
            h.update(f.read(SAMPLE))
    return "fast:" + h.hexdigest()


def classifier_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(q for q in folder.rglob("*") if q.is_file()):
        h.update(p.relative_to(folder).as_posix().encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def settings_for_key(cfg: InferenceConfig) -> dict[str, Any]:
    return {k: v for k, v in cfg.model_dump(mode="json").items() if k not in SPEED_ONLY}


def task_id(name: str) -> str:
    """A file-name-safe id, unique per image name."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60] or "image"
    return f"{stem}-{_sha(name)[:8]}"


@dataclass
class Task:
    id: str
    image: str
    file: str
    kind: str
    """``folder``: results go beside the project's images; ``qupath``: results are merged into data.qpdata."""
    key: str
    file_hash: str
    annotations_hash: str
    annotations: list[dict] | None = field(default=None, repr=False)
    """The annotations in scope as GeoJSON features (QuPath projects: workers cannot read data.qpdata)."""

    def manifest(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("annotations")
        return d


@dataclass
class Plan:
    project_root: Path
    classifier: str
    classifier_dir: Path
    classifier_hash: str
    settings: dict[str, Any]
    run_dir: Path
    tasks: list[Task]

    def manifest(self) -> dict[str, Any]:
        return {"project": str(self.project_root), "classifier": self.classifier,
                "classifier_hash": self.classifier_hash, "settings": self.settings,
                "settings_hash": _sha(canonical(settings_for_key(InferenceConfig(**self.settings)))),
                "tasks": [t.manifest() for t in self.tasks]}


def default_run_dir(root: Path, classifier: str, output: str) -> Path:
    return root / "batch" / f"{classifier}.{output}"


def image_file(image: ProjectImage) -> tuple[Path, str]:
    """The file a worker reads for ``image`` (without a JVM) and the kind of project it belongs to."""
    path = getattr(image, "path", None)
    if path is not None:  # a folder project's image
        return Path(path), "folder"
    files_of = getattr(image, "image_files", None)
    if files_of is None:
        raise DataError(f"image {image.name!r}: dlpixel cannot tell which file holds it; apply it with "
                        "`dlpixel apply`")
    entry = getattr(image, "entry", None)
    if entry is not None:
        builder = str(entry.getServerBuilder().getClass().getSimpleName())
        if builder != "DefaultImageServerBuilder":
            raise DataError(f"image {image.name!r} is read by QuPath through a {builder} (rotated, cropped, combined "
                            "or remote), which has no file that workers can read; apply it with `dlpixel apply`")
    files = files_of()
    if len(files) != 1 or not files[0].name.lower().endswith(READABLE_SUFFIXES):
        raise DataError(f"image {image.name!r} is read by QuPath from {[str(f) for f in files] or 'no local file'}; "
                        f"workers read single {', '.join(READABLE_SUFFIXES)} files only: apply it with "
                        "`dlpixel apply`")
    image.check_files()  # type: ignore[attr-defined]
    return files[0], "qupath"


def make_plan(project: Project, classifier: str, cfg: InferenceConfig, image_names: list[str] | None,
              run_dir: Path | None = None, full_hash: bool = False) -> Plan:
    from ..inference.run import check_request, scope_shapes

    entry = store.load_classifier(project.root, classifier)
    images = select_images(project, image_names)
    check_request(entry.metadata, cfg, images, {})
    c_hash = classifier_hash(entry.path)
    s_hash = _sha(canonical(settings_for_key(cfg)))
    tasks = []
    for image in images:
        path, kind = image_file(image)
        if not path.is_file():
            raise DataError(f"image {image.name!r}: its file {path} is missing; move it back or relink it")
        shapes = scope_shapes(image, cfg, {})
        # Measurements on the annotations (this classifier's earlier results among them) do not change results.
        features = None if shapes is None else [shape_to_feature(dataclasses.replace(s, measurements={}),
                                                                 "annotation") for s in shapes]
        a_hash = _sha(canonical(features))
        f_hash = file_hash(path, full_hash)
        key = _sha(canonical([image.name, f_hash, a_hash, c_hash, s_hash]))
        tasks.append(Task(task_id(image.name), image.name, str(path), kind, key, f_hash, a_hash,
                          features if kind == "qupath" else None))
    root = Path(project.root)
    return Plan(root, classifier, entry.path, c_hash, cfg.model_dump(mode="json"),
                run_dir or default_run_dir(root, classifier, cfg.output), tasks)
