"""Peak memory of ``apply`` on a whole-slide-sized image: a pyramidal RGB OME-TIFF (20,000 × 20,000 px by default)
is written tile by tile, then a classifier is applied to all of it (``--output map``, scope image) and to a few
large annotations (``--output measurements``). Each apply runs in its own child process; its peak resident memory
(``ru_maxrss`` from ``os.wait4``), wall time and tiles per second are printed. The target is a peak under 2 GB:
memory must follow a row of tiles, not the image.

    python benchmarks/inference_memory.py                      # 20k × 20k, downsample 1, tile 512
    python benchmarks/inference_memory.py --size 4000 --json   # a quick run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

PIXEL_SIZE_UM = 0.5
IMAGE_TILE = 256
TARGET_PEAK_GB = 2.0


def tissue_rgb(xs: np.ndarray, ys: np.ndarray, seed: int = 0) -> np.ndarray:
    """A stain-like RGB texture (rows, cols, 3) uint8 at full-resolution coordinates ``ys`` × ``xs``: a bright
    background, blobs of pink tissue at a scale of thousands of pixels and dark nuclei-like dots in them. It is a
    function of the coordinates, so any tile at any pyramid level can be made on its own."""
    x = xs[None, :].astype(np.float32)
    y = ys[:, None].astype(np.float32)
    tissue = (np.sin(x / 1700.0 + 1.3 * seed) * np.cos(y / 2300.0) + 0.6 * np.sin((x + y) / 3100.0)) > -0.1
    nuclei = np.cos(x / 6.1) * np.cos(y / 5.3) * np.sin((x - y) / 37.0) > 0.45
    r = np.where(tissue, np.where(nuclei, 90, 225), 244)
    g = np.where(tissue, np.where(nuclei, 60, 160), 242)
    b = np.where(tissue, np.where(nuclei, 150, 200), 246)
    ripple = (8 * np.sin(x / 13.0 + y / 17.0)).astype(np.int16)
    return np.clip(np.stack([r, g, b], axis=-1) + ripple[..., None], 0, 255).astype(np.uint8)


def pyramid_factors(size: int, tile: int = IMAGE_TILE) -> list[int]:
    """Downsample factors of the stored levels: halved until the image fits one tile."""
    factors = [1]
    while size // factors[-1] > tile:
        factors.append(factors[-1] * 2)
    return factors


def level_tiles(size: int, factor: int, tile: int = IMAGE_TILE) -> Iterator[np.ndarray]:
    """The tiles of one pyramid level, row by row, each sampled at the centres of its pixels' footprints."""
    n = size // factor
    for ty in range(math.ceil(n / tile)):
        ys = (np.arange(ty * tile, min(n, (ty + 1) * tile)) + 0.5) * factor
        for tx in range(math.ceil(n / tile)):
            xs = (np.arange(tx * tile, min(n, (tx + 1) * tile)) + 0.5) * factor
            yield tissue_rgb(xs, ys)


def write_slide(path: Path, size: int) -> Path:
    """A square pyramidal RGB OME-TIFF (zlib, 256-px tiles, pixel size 0.5 µm) written from tile generators, so the
    image is never held in memory."""
    import tifffile

    factors = pyramid_factors(size)
    metadata = {"axes": "YXS", "PhysicalSizeX": PIXEL_SIZE_UM, "PhysicalSizeXUnit": "µm",
                "PhysicalSizeY": PIXEL_SIZE_UM, "PhysicalSizeYUnit": "µm"}
    options: dict[str, Any] = {"tile": (IMAGE_TILE, IMAGE_TILE), "photometric": "rgb", "compression": "zlib",
                               "compressionargs": {"level": 1}, "dtype": np.uint8}
    tmp = path.with_name(path.name + ".part")
    with tifffile.TiffWriter(tmp, bigtiff=size * size * 3 > 2**31, ome=True) as tw:
        tw.write(level_tiles(size, 1), shape=(size, size, 3), subifds=len(factors) - 1, metadata=metadata,
                 resolution=(1e4 / PIXEL_SIZE_UM, 1e4 / PIXEL_SIZE_UM), resolutionunit="CENTIMETER", **options)
        for f in factors[1:]:
            n = size // f
            tw.write(level_tiles(size, f), shape=(n, n, 3), subfiletype=1, metadata=None, **options)
    tmp.replace(path)
    return path


def annotations_geojson(size: int) -> list[dict[str, Any]]:
    """Three large annotations (together about a fifth of the image): a disk, a band across the whole width and a
    concave polygon."""
    import shapely
    from shapely.geometry import mapping

    s = float(size)
    shapes = {
        "disk": shapely.Point(0.22 * s, 0.22 * s).buffer(0.14 * s, quad_segs=64),
        "band": shapely.box(0.03 * s, 0.47 * s, 0.97 * s, 0.55 * s),
        "chevron": shapely.Polygon([(0.55 * s, 0.08 * s), (0.95 * s, 0.08 * s), (0.95 * s, 0.4 * s),
                                    (0.75 * s, 0.22 * s), (0.55 * s, 0.4 * s)]),
    }
    return [{"type": "Feature", "id": name, "geometry": mapping(g), "properties": {"objectType": "annotation"}}
            for name, g in shapes.items()]


def prepare(folder: Path, size: int, downsample: float, tile_size: int, backbone: str) -> Path:
    """A folder project with the slide, its annotations and the benchmark classifier; the slide is reused when a
    previous run left one of the same size."""
    from dlpixel.inference.bench import _bench_classifier

    folder.mkdir(parents=True, exist_ok=True)
    slide = folder / f"slide{size}.ome.tif"
    if not slide.exists():
        t0 = time.perf_counter()
        write_slide(slide, size)
        print(f"wrote {slide} ({slide.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.0f} s",
              file=sys.stderr)
    slide.with_name(slide.name + ".geojson").write_text(
        json.dumps({"type": "FeatureCollection", "features": annotations_geojson(size)}))
    _bench_classifier(folder, backbone, tile_size, downsample)
    return slide


def run_child(args: argparse.Namespace) -> None:
    """Inside the measured process: apply the classifier and print one JSON line of timings."""
    from dlpixel.config import InferenceConfig
    from dlpixel.inference.run import apply_classifier
    from dlpixel.projects import open_project

    tiles: dict[str, Any] = {}

    def listener(event: dict[str, Any]) -> None:
        if event.get("event") == "tiles":
            tiles.update(event)

    cfg = InferenceConfig(output=args.child, scope="image" if args.child == "map" else "annotations",
                          tile_size=args.tile_size, batch_size=args.batch_size, backend=args.backend, device="cpu")
    t0 = time.perf_counter()
    with open_project(args.workdir) as project:
        written = apply_classifier(project, "bench", cfg, [args.image], listeners=[listener])
    print(json.dumps({"output": args.child, "seconds": time.perf_counter() - t0, "tiles": tiles.get("done", 0),
                      "tiles_per_second": tiles.get("tiles_per_second"),
                      "written": [str(p) for p in written]}))


def measure(args: argparse.Namespace, output: str, image: str) -> dict[str, Any]:
    """Apply ``output`` in a child process; its result with the child's peak resident memory."""
    cmd = [sys.executable, __file__, "--child", output, "--workdir", str(args.workdir), "--image", image,
           "--tile-size", str(args.tile_size), "--batch-size", str(args.batch_size), "--backend", args.backend]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"apply --output {output} failed with exit status {proc.returncode}")
    result = json.loads(out.strip().splitlines()[-1])
    result["wall_seconds"] = time.perf_counter() - t0
    result["peak_rss_mib"] = usage.ru_maxrss / 1024
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", type=int, default=20_000, help="side of the square test slide in pixels")
    p.add_argument("--downsample", type=float, default=1.0, help="the classifier's downsample")
    p.add_argument("--tile-size", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--backend", choices=["auto", "torch", "onnx"], default="auto")
    p.add_argument("--backbone", default="efficientnet-lite0")
    p.add_argument("--outputs", default="map,measurements", help="comma-separated: map, measurements")
    p.add_argument("--workdir", type=Path, help="project folder to use and keep (default: a temporary one)")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.add_argument("--child", choices=["map", "measurements"], help=argparse.SUPPRESS)
    p.add_argument("--image", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        run_child(args)
        return 0
    with tempfile.TemporaryDirectory(prefix="dlpixel-memory-") as tmp:
        if args.workdir is None:
            args.workdir = Path(tmp)
        slide = prepare(args.workdir, args.size, args.downsample, args.tile_size, args.backbone)
        runs = [measure(args, output.strip(), slide.name) for output in args.outputs.split(",")]
    report = {"image_px": args.size, "downsample": args.downsample, "tile_size": args.tile_size,
              "batch_size": args.batch_size, "backend": args.backend, "cpu_count": os.cpu_count(),
              "target_peak_mib": TARGET_PEAK_GB * 1024,
              "runs": [{k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items() if k != "written"}
                       for r in runs]}
    if args.json:
        print(json.dumps(report))
    else:
        print(f"image {args.size} x {args.size} px, downsample {args.downsample}, tile {args.tile_size}, "
              f"batch {args.batch_size}, backend {args.backend}")
        for r in report["runs"]:
            ok = "ok" if r["peak_rss_mib"] < report["target_peak_mib"] else "OVER TARGET"
            print(f"  {r['output']:13s} peak {r['peak_rss_mib']:8.0f} MiB ({ok})  {r['wall_seconds']:8.1f} s  "
                  f"{r['tiles']:6d} tiles  {r['tiles_per_second'] or 0:6.2f} tiles/s")
    return 0 if all(r["peak_rss_mib"] < TARGET_PEAK_GB * 1024 for r in report["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
