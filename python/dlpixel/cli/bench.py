"""``dlpixel bench``: throughput benchmarks that print ratios (see ``dlpixel.inference.bench``)."""

from __future__ import annotations

import argparse
import json
from typing import Any


def _cmd_inference(args: argparse.Namespace) -> int:
    from ..inference.bench import bench_inference

    result = bench_inference(args.size, args.tile_size, args.batch_size, args.backbone, args.backend, args.device,
                             args.repeats)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:30s} {value}")
    return 0


def register_cli(sub: Any) -> None:
    p = sub.add_parser("bench", help="throughput benchmarks that print ratios")
    bench_sub = p.add_subparsers(dest="bench", required=True)
    q = bench_sub.add_parser("inference", help="apply end to end vs the model alone (pipeline_efficiency)")
    q.add_argument("--size", type=int, default=2048, help="side of the synthetic test image in pixels")
    q.add_argument("--tile-size", type=int, default=256)
    q.add_argument("--batch-size", type=int, default=8)
    q.add_argument("--backbone", default="efficientnet-lite0")
    q.add_argument("--backend", choices=["auto", "torch", "onnx"], default="auto")
    q.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    q.add_argument("--repeats", type=int, default=3, help="alternating runs of each measurement; the best counts")
    q.add_argument("--json", action="store_true", help="one JSON object")
    q.set_defaults(func=_cmd_inference)
    from .qupath import register_bench_cli

    register_bench_cli(bench_sub)
