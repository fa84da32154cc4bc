"""``dlpixel batch`` on N images with 1 and then 2 local CPU workers: wall time end to end (worker start-up
included) and the speed-up.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/batch_workers.py [--images 6] [--size 512]

The classifier is the benchmarks' untrained U-Net (EfficientNet-Lite0 encoder, 256-px tiles) run by PyTorch. Each
worker uses (CPU cores / workers) threads, so on 2 cores one worker runs 2 threads and two workers 1 each: the
speed-up shows what per-image processes gain over threads inside one process (reading, statistics, blending and
writing overlap with the model in the other process), not extra cores.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
from dlpixel.batch import run_batch
from dlpixel.config import InferenceConfig
from dlpixel.inference.bench import _bench_classifier
from dlpixel.projects import open_project


def make_project(folder: Path, n: int, size: int) -> None:
    """``n`` textured RGB images and the benchmarks' untrained U-Net (EfficientNet-Lite0) as classifier ``bench``."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        tifffile.imwrite(folder / f"slide{i:03d}.tif", rng.integers(0, 255, (size, size, 3), np.uint8),
                         photometric="rgb", tile=(256, 256))
    _bench_classifier(folder, "efficientnet-lite0", 256)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--size", type=int, default=512)
    args = ap.parse_args()
    cfg = InferenceConfig(output="map", scope="image", device="cpu", backend="torch", tile_size=256)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "project"
        make_project(folder, args.images, args.size)
        times = {}
        for workers in (1, 2):
            project = open_project(folder)
            t0 = time.perf_counter()
            report = run_batch(project, "bench", cfg, workers=workers, run_dir=Path(tmp) / f"run{workers}")
            times[workers] = time.perf_counter() - t0
            assert report["totals"]["done"] == args.images, report["totals"]
            busy = sum(r["seconds"] for r in report["slides"])
            print(f"{workers} worker(s): {times[workers]:.1f} s for {args.images} images of {args.size} px "
                  f"({report['tiles']} tiles, {report['tiles'] / times[workers]:.1f} tiles/s); the slides took "
                  f"{busy:.1f} s of worker time, so {times[workers] - busy / workers:.1f} s went to starting the "
                  "workers and waiting on the slowest")
    print(f"speed-up 2 vs 1 worker(s): {times[1] / times[2]:.2f}x on {os.cpu_count()} CPU core(s)")


if __name__ == "__main__":
    main()
