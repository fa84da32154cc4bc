"""Throughput of ``apply`` against the model alone, per tile size, batch size and backend: end-to-end tiles per
second, model-only tiles per second on ready tensors (same device, batch and precision) and their ratio,
``pipeline_efficiency`` (target: at least 0.9). Each configuration is one
``dlpixel.inference.bench.bench_inference`` call, which alternates the two measurements and keeps the best of each,
so a busy machine slows both alike.

    python benchmarks/inference_throughput.py
    python benchmarks/inference_throughput.py --configs 256x8 --backends onnx --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

DEFAULT_CONFIGS = "256x8,256x4,512x4"
"""Tile size × batch size; 256 × 8 is what ``dlpixel bench inference`` and ``apply`` use by default."""


def parse_configs(text: str) -> list[tuple[int, int]]:
    """``"256x8,512x4"`` → ``[(256, 8), (512, 4)]``."""
    out = []
    for item in text.split(","):
        tile, _, batch = item.strip().partition("x")
        out.append((int(tile), int(batch)))
    return out


def run(configs: list[tuple[int, int]], backends: list[str], size: int, repeats: int,
        backbone: str) -> list[dict[str, Any]]:
    """One ``bench_inference`` result per configuration and backend, with its wall time."""
    from dlpixel.inference.bench import bench_inference

    results = []
    for tile, batch in configs:
        for backend in backends:
            t0 = time.perf_counter()
            result = bench_inference(size, tile, batch, backbone, backend, "cpu", repeats)
            result["bench_seconds"] = round(time.perf_counter() - t0, 1)
            results.append(result)
            print(f"  tile {tile:4d} batch {batch:2d} {backend:5s} end-to-end "
                  f"{result['end_to_end_tiles_per_second']:6.2f} tiles/s  model-only "
                  f"{result['model_only_tiles_per_second']:6.2f} tiles/s  efficiency "
                  f"{result['pipeline_efficiency']:.3f}", file=sys.stderr, flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default=DEFAULT_CONFIGS, help="comma-separated TILExBATCH (default: %(default)s)")
    p.add_argument("--backends", default="torch,onnx", help="comma-separated: torch, onnx")
    p.add_argument("--size", type=int, default=2048, help="side of the synthetic image in pixels")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--backbone", default="efficientnet-lite0")
    p.add_argument("--json", action="store_true", help="one JSON object")
    args = p.parse_args(argv)
    results = run(parse_configs(args.configs), [b.strip() for b in args.backends.split(",")], args.size,
                  args.repeats, args.backbone)
    if args.json:
        print(json.dumps({"cpu_count": os.cpu_count(), "results": results}))
        return 0
    print(f"{'tile':>5s} {'batch':>5s} {'backend':>7s} {'tiles':>5s} {'end-to-end/s':>12s} {'model-only/s':>12s} "
          f"{'efficiency':>10s}")
    for r in results:
        print(f"{r['tile_size']:5d} {r['batch_size']:5d} {r['backend']:>7s} {r['tiles']:5d} "
              f"{r['end_to_end_tiles_per_second']:12.2f} {r['model_only_tiles_per_second']:12.2f} "
              f"{r['pipeline_efficiency']:10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
