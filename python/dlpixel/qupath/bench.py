"""How fast pixels cross the bridge: QuPath's readRegion alone against readRegion plus conversion to numpy.

The conversion takes one copy out of Java (packed RGB) or two (banked multi-channel: the JNI copy, then channel
planes into one array). Against a readRegion that is itself a plain memory copy, as in the test stand-in (it decodes
the whole file when the server opens) or QuPath with a warm tile cache, the ratio is therefore bounded near 0.7-0.9
for RGB and 0.6-0.7 for banked channels; against reads that decode tiles from the file, which is what ``apply`` and
training see on a slide read once, the conversion is a small fraction. On a shared, busy machine the figures vary
by tens of percent from run to run: compare ratios from the same run."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .pixels import QuPathImageSource
from .project import open_qupath_project


@dataclass(frozen=True)
class BridgeBench:
    """Throughput of region reads through the bridge, in MB of numpy output per second."""

    image: str
    tile_size: int
    downsample: float
    tiles: int
    read_mb_s: float
    read_convert_mb_s: float

    @property
    def ratio(self) -> float:
        """(readRegion + conversion) / readRegion alone: 1.0 means conversion is free."""
        return self.read_convert_mb_s / self.read_mb_s if self.read_mb_s else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "ratio": self.ratio}

    def format(self) -> str:
        return (f"{self.image}: {self.tiles} tiles of {self.tile_size} px at downsample {self.downsample:g}: "
                f"readRegion {self.read_mb_s:.0f} MB/s, readRegion + numpy {self.read_convert_mb_s:.0f} MB/s, "
                f"ratio {self.ratio:.2f}")


def bench_source(source: QuPathImageSource, *, tile_size: int = 512, downsample: float = 1.0,
                 seconds: float = 2.0) -> BridgeBench:
    """Alternate passes of readRegion alone and readRegion + conversion over the same tiles for about ``seconds``."""
    step = int(round(tile_size * downsample))
    xs = range(0, max(1, source.width - step + 1), step)
    ys = range(0, max(1, source.height - step + 1), step)
    tiles = [(x, y, min(step, source.width - x), min(step, source.height - y)) for y in ys for x in xs]
    for x, y, w, h in tiles[:2]:
        source.read_region(downsample, x, y, w, h)
    t_read = t_both = 0.0
    nbytes = 0
    n = 0
    deadline = time.perf_counter() + seconds
    while n == 0 or time.perf_counter() < deadline:
        for x, y, w, h in tiles:
            t0 = time.perf_counter()
            source.read_java(downsample, x, y, w, h)
            t1 = time.perf_counter()
            arr = source.read_region(downsample, x, y, w, h)
            t2 = time.perf_counter()
            t_read += t1 - t0
            t_both += t2 - t1
            nbytes += arr.nbytes
            n += 1
    mb = nbytes / 1e6
    return BridgeBench(image=source.name, tile_size=tile_size, downsample=downsample, tiles=n,
                       read_mb_s=mb / t_read, read_convert_mb_s=mb / t_both)


def bench_bridge(project: str | Path, *, image: str | None = None, tile_size: int = 512, downsample: float = 1.0,
                 seconds: float = 2.0, qupath_dir: str | Path | None = None) -> list[BridgeBench]:
    """``dlpixel bench bridge``: MB/s of readRegion alone and with numpy conversion, per image of a QuPath project."""
    proj = open_qupath_project(project, qupath_dir=qupath_dir)
    results = []
    for img in proj.select([image] if image else None):
        source = img.open()
        try:
            results.append(bench_source(source, tile_size=tile_size, downsample=downsample, seconds=seconds))
        finally:
            source.close()
    return results
