"""Test helpers for the QuPath bridge: build the Java stand-in of QuPath's API and write small pyramid TIFFs."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import tifffile

JAVA_DIR = Path(__file__).parent / "java"
BUILD_DIR = JAVA_DIR / "build"


def jts_jar() -> Path:
    """JTS from Debian's libjts-java (what QuPath itself bundles)."""
    found = sorted(glob.glob("/usr/share/java/jts-core*.jar"))
    if not found:
        raise FileNotFoundError("JTS not found in /usr/share/java: apt-get install -y libjts-java")
    return Path(found[0])


def build_standin() -> Path:
    """Compile tests/java/src with javac into tests/java/build/lib/qupath-standin.jar (next to a link to JTS), unless
    the jar is newer than every source; returns the folder of jars to start the JVM from."""
    lib = BUILD_DIR / "lib"
    jar = lib / "qupath-standin.jar"
    sources = sorted((JAVA_DIR / "src").rglob("*.java"))
    jts = jts_jar()
    if not (jar.exists() and jar.stat().st_mtime >= max(p.stat().st_mtime for p in sources)):
        classes = BUILD_DIR / "classes"
        shutil.rmtree(classes, ignore_errors=True)
        classes.mkdir(parents=True)
        javac = shutil.which("javac") or (os.path.join(os.environ["JAVA_HOME"], "bin", "javac")
                                          if os.environ.get("JAVA_HOME") else None)
        if not javac:
            raise FileNotFoundError("javac not found: install a JDK 17+")
        subprocess.run([javac, "-nowarn", "-d", str(classes), "-cp", str(jts), *map(str, sources)], check=True)
        lib.mkdir(parents=True, exist_ok=True)
        tmp = jar.with_suffix(".tmp")
        with zipfile.ZipFile(tmp, "w") as z:
            for f in sorted(classes.rglob("*.class")):
                z.write(f, f.relative_to(classes).as_posix())
        tmp.replace(jar)
    link = lib / "jts-core.jar"
    if not link.exists():
        try:
            link.symlink_to(jts)
        except OSError:
            shutil.copy2(jts, link)
    return lib


def write_pyramid_tiff(path: Path, levels: list[np.ndarray], pixel_size_um: float | None, *, subifds: bool) -> Path:
    """A TIFF whose levels are pages (what the stand-in reads) or, for a real QuPath, an OME-TIFF with SubIFDs."""
    rgb = levels[0].ndim == 3 and levels[0].shape[2] == 3 and levels[0].dtype == np.uint8
    kw: dict = {"photometric": "rgb" if rgb else "minisblack", "planarconfig": "contig"}
    res = {}
    if pixel_size_um:
        res = {"resolution": (1e4 / pixel_size_um, 1e4 / pixel_size_um), "resolutionunit": "CENTIMETER"}
    if subifds:
        if not rgb:
            levels = [np.moveaxis(lev, -1, 0) for lev in levels]
            kw["planarconfig"] = "separate"
        meta = {"axes": "YXS" if rgb else "CYX", "PhysicalSizeX": pixel_size_um, "PhysicalSizeY": pixel_size_um}
        with tifffile.TiffWriter(path, ome=True) as t:
            t.write(levels[0], subifds=len(levels) - 1, metadata=meta, **kw, **res)
            for lev in levels[1:]:
                t.write(lev, subfiletype=1, **kw)
    else:
        with tifffile.TiffWriter(path) as t:
            for i, lev in enumerate(levels):
                t.write(lev, **kw, **(res if i == 0 else {}))
    return path
