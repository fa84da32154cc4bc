"""Open whatever ``--project`` names: a QuPath project (through JPype) or a folder of images with GeoJSON."""

from __future__ import annotations

from pathlib import Path

from .data.base import Project
from .errors import DataError


def is_qupath_project(path: Path) -> bool:
    return path.suffix == ".qpproj" or (path.is_dir() and (path / "project.qpproj").is_file())


def project_root(path: str | Path) -> Path:
    """The folder that holds ``classifiers/``: the QuPath project's folder, or the folder project itself."""
    p = Path(path).expanduser()
    if is_qupath_project(p):
        return p.parent if p.suffix == ".qpproj" else p
    return p


def open_project(path: str | Path, qupath_dir: str | None = None) -> Project:
    """A QuPath project for ``project.qpproj`` or a folder holding one, otherwise a folder project."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"project not found: {p}; pass a QuPath project (project.qpproj) or a folder of images")
    if is_qupath_project(p):
        from .qupath.project import open_qupath_project

        return open_qupath_project(p, qupath_dir=qupath_dir)
    if p.is_file():
        raise DataError(f"{p} is neither a QuPath project (project.qpproj) nor a folder of images")
    from .data.folder import open_folder_project

    return open_folder_project(p)
