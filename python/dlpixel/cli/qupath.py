"""The QuPath commands for ``dlpixel``: ``images --project P``, ``qupath launch`` and ``bench bridge`` parsers."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..qupath.install import install_qupath_scripts


def _images(args: argparse.Namespace) -> int:
    from ..projects import is_qupath_project, open_project

    path = Path(args.project).expanduser()
    if is_qupath_project(path) and not args.details:
        from ..qupath.project import list_images

        for name in list_images(path, qupath_dir=args.qupath):
            print(name)
        return 0
    from ..errors import DataError

    if not path.is_dir():
        raise DataError(f"{path} is not a QuPath project (project.qpproj or its folder) nor a folder of images")
    try:
        project = open_project(path, qupath_dir=args.qupath)
    except DataError as err:
        if is_qupath_project(path):
            raise
        raise DataError(f"{path} is not a QuPath project (no project.qpproj), nor a folder project: "
                        f"{str(err).removeprefix(str(path) + ': ')}") from None
    try:
        images = project.images()
        if not args.details:
            for image in images:
                print(image.name)
            return 0
        print(image_details(images))
    finally:
        project.close()
    return 0


def image_details(images: list[Any]) -> str:
    """Per image: size, channels, pixel size and, per class, its annotations and the area they label; then the
    classes over all images. What to look at before training."""
    lines: list[str] = []
    totals: dict[str, int] = {}
    for image in images:
        source = image.open()
        try:
            w, h, names, px = source.width, source.height, list(source.channel_names), source.pixel_size_um
        finally:
            source.close()
        calibrated = f"pixel size {px:.4g} µm" if px else "pixel size unknown (areas in px²)"
        lines.append(f"{image.name}: {w:,} × {h:,} px, {len(names)} channel(s) ({', '.join(names)}), {calibrated}")
        per_class: dict[str, list[float]] = {}
        for shape in image.annotations():
            row = per_class.setdefault(shape.class_name or "(unclassified)", [0, 0, 0.0])
            row[0] += 1
            if shape.kind == "area":
                row[1] += 1
                row[2] += shape.geometry.area * (px * px if px else 1.0)
        if not per_class:
            lines.append("    no annotations")
        unit = "µm²" if px else "px²"
        for name in sorted(per_class):
            n, areas, area = per_class[name]
            lines.append(f"    {name}: {n} annotation(s) ({areas} area(s), {n - areas} line(s)/point(s)), "
                         f"{area:,.0f} {unit} in areas")
            if name != "(unclassified)":
                totals[name] = totals.get(name, 0) + n
    classes = ", ".join(f"{name} ({n} annotation(s) in all)" for name, n in sorted(totals.items()))
    lines.append(f"{len(images)} image(s); classes to train: {classes or 'none (classify some annotations)'}")
    return "\n".join(lines)


def _launch(args: argparse.Namespace) -> int:
    from ..qupath.bridge import launch_gui

    launch_gui(args.qupath, list(args.qupath_args or []))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from ..qupath.bench import bench_bridge

    results = bench_bridge(args.project, image=args.image, tile_size=args.tile_size, downsample=args.downsample,
                           seconds=args.seconds, qupath_dir=args.qupath)
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        for r in results:
            print(r.format())
    return 0


def add_qupath_argument(parser: argparse.ArgumentParser) -> None:
    """``--qupath DIR``: where QuPath is installed (else QUPATH_HOME, else the usual install places)."""
    parser.add_argument("--qupath", metavar="DIR", default=None,
                        help="QuPath installation or folder of QuPath jars (default: $QUPATH_HOME, then the usual"
                             " install places)")


def register_cli(subparsers: Any) -> None:
    """Add ``images`` to dlpixel's subcommands."""
    images = subparsers.add_parser("images", help="list a project's images; --details: what training will see")
    images.add_argument("--project", required=True,
                        help="QuPath project (project.qpproj or its folder) or a folder of images with GeoJSON")
    images.add_argument("--details", action="store_true",
                        help="size, channels and pixel size of each image, and per class its annotations and the "
                        "area they label")
    add_qupath_argument(images)
    images.set_defaults(func=_images)


def register_qupath_cli(qsub: Any) -> None:
    """Add ``launch`` under ``dlpixel qupath``."""
    launch = qsub.add_parser("launch", help="start QuPath's GUI with the dlpixel bridge registered")
    add_qupath_argument(launch)
    launch.add_argument("qupath_args", nargs=argparse.REMAINDER, help="arguments passed on to QuPath")
    launch.set_defaults(func=_launch)


def register_bench_cli(bench_subparsers: Any) -> None:
    """Add ``bridge`` under ``dlpixel bench``: MB/s of readRegion alone and with conversion to numpy."""
    p = bench_subparsers.add_parser("bridge", help="pixel throughput through the QuPath bridge")
    p.add_argument("--project", required=True, help="project.qpproj or its folder")
    p.add_argument("--image", default=None, help="one image of the project (default: all)")
    p.add_argument("--tile-size", type=int, default=512, help="tile side in pixels (default %(default)s)")
    p.add_argument("--downsample", type=float, default=1.0, help="resolution of the reads (default %(default)s)")
    p.add_argument("--seconds", type=float, default=2.0, help="time per image")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    add_qupath_argument(p)
    p.set_defaults(func=_bench)


def _install(args: argparse.Namespace) -> int:
    result = install_qupath_scripts(args.user_dir, args.python or sys.executable, print_only=args.print_only)
    print(result.describe())
    return 0


def register_install_cli(qsub: Any) -> None:
    """Add ``install`` under ``dlpixel qupath``."""
    install = qsub.add_parser("install", help="copy the script helper and the menu into your QuPath user folder")
    install.add_argument("--user-dir", type=Path, metavar="DIR",
                         help="QuPath's user folder (default: the newest ~/QuPath/vX.Y, else ~/QuPath)")
    install.add_argument("--python", metavar="PATH", help="Python executable QuPath runs (default: this one)")
    install.add_argument("--print-only", action="store_true", help="print where the files go; write nothing")
    install.set_defaults(func=_install)
