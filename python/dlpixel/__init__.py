"""dlpixel: deep-learning pixel classifiers for QuPath.

The Python API is four functions; the command line, the JSON requests of QuPath's Groovy helper and the in-process
bridge all end in them::

    import dlpixel

    project = dlpixel.open_project("my/project.qpproj")          # or a folder of images with GeoJSON
    entry = dlpixel.train(project, "tumour_stroma", {"epochs": 30})
    written = dlpixel.apply(project, "tumour_stroma", {"output": "measurements"})
    meta = dlpixel.load_classifier(project, "tumour_stroma").metadata

Settings are dicts with the keys of ``dlpixel train --help-settings`` (nested keys as nested dicts or dotted keys)
or a ``TrainingConfig`` / ``InferenceConfig``. Heavy modules (torch, the JVM) load on first use.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from .classifiers.store import ClassifierEntry
    from .config import InferenceConfig, TrainingConfig
    from .data.base import Project
    from .runtime.events import CancelToken, Listener

__all__ = ["__version__", "apply", "load_classifier", "open_project", "train"]


def open_project(path: str | Path, qupath_dir: str | Path | None = None) -> Project:
    """Open a QuPath project (``project.qpproj`` or its folder; QuPath's jars are found through ``qupath_dir``,
    ``$QUPATH_HOME`` or the usual install places) or a folder of images with ``<image>.geojson`` annotations.
    Close it with ``project.close()``."""
    from .projects import open_project as _open

    return _open(path, qupath_dir=str(qupath_dir) if qupath_dir else None)


def _project(project: Project | str | Path) -> Project:
    return open_project(project) if isinstance(project, (str, Path)) else project


def train(
    project: Project | str | Path,
    name: str,
    settings: TrainingConfig | Mapping[str, Any] | None = None,
    images: Sequence[str] | None = None,
    *,
    overwrite: bool = False,
    listeners: Iterable[Listener] = (),
    cancel: CancelToken | None = None,
) -> ClassifierEntry:
    """Train a pixel classifier on the classified annotations of ``images`` (all annotated images when None) and
    save it atomically to ``<project>/classifiers/dl/<name>/``. Refuses an existing name unless ``overwrite``."""
    from .config import TrainingConfig
    from .config.layers import build_config
    from .training.run import train_classifier

    cfg = settings if isinstance(settings, TrainingConfig) else build_config(TrainingConfig, dict(settings or {}),
                                                                             source="settings")
    return train_classifier(_project(project), name, cfg, images, overwrite=overwrite, listeners=listeners,
                            cancel=cancel)


def apply(
    project: Project | str | Path,
    classifier: str,
    settings: InferenceConfig | Mapping[str, Any] | None = None,
    images: Sequence[str] | None = None,
    *,
    listeners: Iterable[Listener] = (),
    cancel: CancelToken | None = None,
) -> list[Path]:
    """Apply the saved ``classifier`` to ``images`` (all when None) and write ``settings['output']``
    (measurements, objects, map, probabilities); returns the files written (QuPath projects: the saved images)."""
    from .config import InferenceConfig
    from .config.layers import build_config
    from .inference.run import apply_classifier

    cfg = settings if isinstance(settings, InferenceConfig) else build_config(InferenceConfig, dict(settings or {}),
                                                                              source="settings")
    return apply_classifier(_project(project), classifier, cfg, images, listeners=listeners, cancel=cancel)


def load_classifier(project: Project | str | Path, name: str) -> ClassifierEntry:
    """A saved classifier: its folder and its metadata (classes, channels, settings, validation results)."""
    from .classifiers.store import load_classifier as _load
    from .projects import project_root

    root = project_root(project) if isinstance(project, (str, Path)) else project.root
    return _load(root, name)
