"""Everything that touches Java: find and start QuPath, read its projects, write results back, the in-process bridge.

Only this package imports jpype; the rest of dlpixel sees ``ImageSource``, ``LabelShape`` and ``Project``.
"""

from __future__ import annotations

from typing import Any

from .jvm import QuPathCompat, QuPathError, QuPathNotFound, find_qupath, start_jvm

_LAZY = {
    "open_qupath_project": "project",
    "create_qupath_project": "project",
    "list_images": "project",
    "QuPathProject": "project",
    "QuPathImage": "project",
    "QuPathImageSource": "pixels",
    "write_results": "writeback",
    "Bridge": "bridge",
    "register_bridge": "bridge",
    "launch_gui": "bridge",
    "bench_bridge": "bench",
}

__all__ = ["QuPathCompat", "QuPathError", "QuPathNotFound", "find_qupath", "start_jvm", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(name)
