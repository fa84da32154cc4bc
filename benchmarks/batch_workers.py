"""``dlpixel batch`` on N images with 1 and then 2 local CPU workers: wall time end to end (worker start-up
included) and the speed-up.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/batch_workers.py [--images 8] [--size 768]

Each worker uses (CPU cores / workers) threads, so on 2 cores one worker runs 2 threads and two workers 1 each: the
speed-up shows what per-image processes gain over threads inside one process (reading, blending and writing run in
parallel too), not extra cores.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
from dlpixel.batch import run_batch
from dlpixel.classifiers.onnx_import import import_onnx
from dlpixel.config import InferenceConfig, NormalizationConfig
from dlpixel.projects import open_project


def small_net() -> torch.nn.Module:
    """A few 3 × 3 convolutions: enough arithmetic per pixel for the model to matter, as it does with a U-Net."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 24, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(24, 24, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(24, 24, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(24, 2, 1),
    ).eval()


def make_project(folder: Path, n: int, size: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        tifffile.imwrite(folder / f"slide{i:03d}.tif", rng.integers(0, 255, (size, size, 3), np.uint8),
                         photometric="rgb", tile=(256, 256))
    onnx_path = folder.parent / "net.onnx"
    torch.onnx.export(small_net(), torch.zeros(1, 3, 256, 256), str(onnx_path), input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "n", 2: "h", 3: "w"}}, dynamo=False)
    import_onnx(folder, "net", onnx_path, ["A", "B"], ["Red", "Green", "Blue"], 256,
                normalization=NormalizationConfig(strategy="fixed_range", min=0, max=255))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--size", type=int, default=768)
    args = ap.parse_args()
    cfg = InferenceConfig(output="map", scope="image", device="cpu", backend="onnx", tile_size=256)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "project"
        make_project(folder, args.images, args.size)
        times = {}
        for workers in (1, 2):
            project = open_project(folder)
            t0 = time.perf_counter()
            report = run_batch(project, "net", cfg, workers=workers, run_dir=Path(tmp) / f"run{workers}")
            times[workers] = time.perf_counter() - t0
            assert report["totals"]["done"] == args.images, report["totals"]
            print(f"{workers} worker(s): {times[workers]:.1f} s for {args.images} images of {args.size} px "
                  f"({report['tiles']} tiles, {report['tiles'] / times[workers]:.1f} tiles/s)")
    print(f"speed-up 2 vs 1 worker(s): {times[1] / times[2]:.2f}x on {os.cpu_count()} CPU core(s)")


if __name__ == "__main__":
    main()
