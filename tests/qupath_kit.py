"""Which real QuPath the QuPath tests run against, and small pyramid TIFFs for them.

`.ci/run` assembles QuPath 0.5.1, 0.6.0 and 0.7.0 (core jars compiled from QuPath's source, no GUI, each with the
Java it bundles) into `.qupath/<version>` and names them in ``DLPIXEL_TEST_QUPATH`` (``os.pathsep``-separated).
The QuPath tests of one pytest process run against ``QUPATH_HOME`` when it is set, else against the first of
those; ``test_qupath_versions.py`` runs them again in a child process for each of the others (one JVM per
process). Without any QuPath they are skipped with a reason.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

REPO = Path(__file__).resolve().parents[1]
KIT_DIR = REPO / ".qupath"
QUPATH_MODULES = tuple(m for m in ("tests/test_qupath_bridge.py", "tests/test_qupath_e2e.py",
                                   "tests/test_qupath_groovy.py", "tests/test_qupath_pixels.py",
                                   "tests/test_reliability_qupath.py") if (REPO / m).is_file())
"""The test modules that need a QuPath JVM in their process."""


def version_of(home: Path) -> str:
    """The version an assembled QuPath records in ``lib/app/VERSION``, else the folder's name."""
    f = Path(home) / "lib" / "app" / "VERSION"
    return f.read_text().strip() if f.is_file() else Path(home).name


def _key(home: Path) -> tuple:
    return tuple(int(p) if p.isdigit() else 0 for p in version_of(home).split("."))


def kits() -> list[Path]:
    """The QuPath installations to test: ``DLPIXEL_TEST_QUPATH``, else every ``.qupath/<version>``, oldest first."""
    named = os.environ.get("DLPIXEL_TEST_QUPATH")
    if named:
        return [Path(p) for p in named.split(os.pathsep) if p]
    if not KIT_DIR.is_dir():
        return []
    return sorted((p for p in KIT_DIR.iterdir() if (p / "lib" / "app" / "VERSION").is_file()), key=_key)


def qupath_home() -> Path | None:
    """The QuPath this process runs: ``QUPATH_HOME``, else the first kit, else None."""
    if os.environ.get("QUPATH_HOME"):
        return Path(os.environ["QUPATH_HOME"])
    found = kits()
    return found[0] if found else None


def require_qupath() -> Path:
    home = qupath_home()
    if home is None:
        pytest.skip("no QuPath to test against: run `bash .ci/run` (it assembles QuPath 0.5.1, 0.6.0 and 0.7.0 into"
                    " .qupath/), or set QUPATH_HOME to a QuPath installation")
    return home


def write_pyramid_tiff(path: Path, levels: list[np.ndarray], pixel_size_um: float | None) -> Path:
    """An OME-TIFF whose reduced levels are SubIFDs, as QuPath's Bio-Formats server reads pyramids."""
    rgb = levels[0].ndim == 3 and levels[0].shape[2] == 3 and levels[0].dtype == np.uint8
    kw: dict = {"photometric": "rgb" if rgb else "minisblack", "planarconfig": "contig"}
    res = {}
    if pixel_size_um:
        res = {"resolution": (1e4 / pixel_size_um, 1e4 / pixel_size_um), "resolutionunit": "CENTIMETER"}
    if not rgb:
        levels = [np.moveaxis(lev, -1, 0) for lev in levels]
        kw["planarconfig"] = "separate"
    meta = {"axes": "YXS" if rgb else "CYX", "PhysicalSizeX": pixel_size_um, "PhysicalSizeY": pixel_size_um}
    with tifffile.TiffWriter(path, ome=True) as t:
        t.write(levels[0], subifds=len(levels) - 1, metadata=meta, **kw, **res)
        for lev in levels[1:]:
            t.write(lev, subfiletype=1, **kw)
    return path
