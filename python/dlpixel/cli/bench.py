"""``dlpixel bench``: throughput benchmarks that print ratios (see ``dlpixel.inference.bench``)."""

from __future__ import annotations

import argparse
import json
from typing import Any


def _cmd_inference(args: argparse.Namespace) -> int:
    from ..inference.bench import bench_inference

    result = bench_inference(args.size, args.tile_size, args.batch_size, args.backbone, args.backend, args.device,
                             args.repeats, args.precision, args.reader_threads, args.image, args.cuda_graphs,
                             not args.inline_writer, args.path, args.map_writer, args.row_readers)
    return _print(result, args.json)


def _print(result: dict[str, Any], as_json: bool) -> int:
    if as_json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:36s} {value}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from ..training.bench import bench_train

    result = bench_train(args.backbone, args.tile_size, args.batch_size, args.train_tiles, args.val_tiles,
                         args.epochs, args.device, args.precision, args.num_workers, args.compile, args.device_cache)
    return _print(result, args.json)


def _workers(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or auto, got {value!r}") from None


def register_cli(sub: Any) -> None:
    p = sub.add_parser("bench", help="throughput benchmarks that print ratios")
    bench_sub = p.add_subparsers(dest="bench", required=True)
    q = bench_sub.add_parser("inference", help="apply end to end vs the model alone (pipeline_efficiency)")
    q.add_argument("--size", type=int, default=2048, help="side of the synthetic test image in pixels")
    q.add_argument("--tile-size", type=int, default=256, help="tile side in pixels (default %(default)s)")
    q.add_argument("--batch-size", type=int, default=8, help="tiles per model call (default %(default)s)")
    q.add_argument("--backbone", default="efficientnet-lite0", help="encoder of the U-Net (default %(default)s)")
    q.add_argument("--backend", choices=["auto", "torch", "onnx"], default="auto",
                   help="PyTorch or ONNX Runtime (default auto)")
    q.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto",
                   help="where the model runs (default auto)")
    q.add_argument("--repeats", type=int, default=3, help="alternating runs of each measurement; the best counts")
    q.add_argument("--precision", choices=["bf16", "fp16", "fp32"], default="bf16", help="PyTorch on a GPU")
    q.add_argument("--reader-threads", type=_workers, default="auto",
                   help="threads reading rows of tiles, or auto as in apply (default %(default)s)")
    q.add_argument("--image", default=None, help="an existing image instead of the synthetic one")
    q.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
                   help="run the model layer by layer on CUDA instead of as a CUDA graph")
    q.add_argument("--inline-writer", action="store_true",
                   help="write the map between batches in the computing thread, not beside it")
    q.add_argument("--map-writer", choices=["auto", "separate_process", "same_process"], default="auto",
                   help="compress the map in a child process or in this one (auto: a child on CUDA), as apply's "
                        "map_writer")
    q.add_argument("--row-readers", choices=["auto", "separate_processes", "same_process"], default="auto",
                   help="read rows of tiles in child processes or in threads of this one (auto: children on CUDA), "
                        "as apply's row_readers")
    q.add_argument("--path", choices=["auto", "host", "device"], default="auto",
                   help="blend in numpy (host) or with PyTorch on the model's device (auto: device on CUDA)")
    q.add_argument("--json", action="store_true", help="one JSON object")
    q.set_defaults(func=_cmd_inference)
    t = bench_sub.add_parser("train", help="the training loop (dlpixel train's fit) vs the training step alone")
    t.add_argument("--backbone", default="efficientnet-lite0", help="encoder of the U-Net (default %(default)s)")
    t.add_argument("--tile-size", type=int, default=256, help="tile side in pixels (default %(default)s)")
    t.add_argument("--batch-size", type=int, default=8, help="tiles per training step (default %(default)s)")
    t.add_argument("--train-tiles", type=int, default=64, help="synthetic training tiles (default %(default)s)")
    t.add_argument("--val-tiles", type=int, default=16, help="synthetic validation tiles (default %(default)s)")
    t.add_argument("--epochs", type=int, default=2, help="epochs to time (default %(default)s)")
    t.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto",
                   help="where training runs (default auto)")
    t.add_argument("--precision", choices=["bf16", "fp16", "fp32"], default="bf16",
                   help="precision on a GPU (default %(default)s)")
    t.add_argument("--num-workers", type=_workers, default="auto",
                   help="DataLoader worker processes, or auto as in training (default %(default)s)")
    t.add_argument("--compile", action="store_true", help="torch.compile on CUDA")
    t.add_argument("--no-device-cache", dest="device_cache", action="store_false",
                   help="serve batches from a DataLoader even where the tiles fit on the GPU")
    t.add_argument("--json", action="store_true", help="one JSON object")
    t.set_defaults(func=_cmd_train)
    from .qupath import register_bench_cli

    register_bench_cli(bench_sub)
