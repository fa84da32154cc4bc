"""``dlpixel apply``."""

from __future__ import annotations

import argparse
from typing import Any

from ..config import InferenceConfig
from ..config.layers import build_config
from ..errors import DataError
from .common import (
    add_progress_flags,
    add_project_flags,
    cancel_on_sigint,
    listener_for,
    plain_help,
    settings_layers,
)


def inference_settings(args: argparse.Namespace) -> InferenceConfig:
    """Settings from ``--config``, then ``--set``, then the dedicated flags (later wins)."""
    layers = settings_layers(args)
    flags = {
        "output": args.output, "scope": args.scope, "tile_size": args.tile_size, "overlap": args.overlap,
        "batch_size": args.batch_size, "device": args.device, "backend": args.backend, "precision": args.precision,
        "object_type": args.object_type, "min_object_area": args.min_object_area,
        "min_hole_area": args.min_hole_area, "simplify": args.simplify,
    }
    layers.append({k: v for k, v in flags.items() if v is not None})
    return build_config(InferenceConfig, *layers, source="settings")


def cmd_apply(args: argparse.Namespace) -> int:
    from ..inference.run import apply_classifier
    from ..projects import open_project

    cfg = inference_settings(args)
    listener = listener_for(args)
    skipped: list[str] = []

    def note_skips(event: dict[str, Any]) -> None:
        if event["event"] == "log" and event.get("level") == "warning" and "skipped" in event["message"]:
            skipped.append(event["message"])

    project = open_project(args.project, qupath_dir=args.qupath)
    try:
        written = apply_classifier(project, args.classifier, cfg, args.image or None, listeners=[listener, note_skips],
                                   cancel=cancel_on_sigint())
    finally:
        getattr(listener, "close", lambda: None)()
        project.close()
    if not written:
        first = skipped[0].removesuffix("; skipped") if skipped else ""
        why = first if len(skipped) == 1 else f"{len(skipped)} images were skipped ({first})" if skipped \
            else "no image gave a result"
        hint = "; draw area annotations, or use --scope image" if cfg.scope != "image" else ""
        raise DataError(f"nothing was written: {why}{hint}")
    if args.events != "jsonl":
        for path in written:
            print(path)
    return 0


def _doc(key: str) -> str:
    return plain_help(InferenceConfig.model_fields[key].description)


def register_cli(sub: Any) -> None:

    fields = InferenceConfig.model_fields
    p = sub.add_parser("apply", help="apply a classifier to a project's images")
    add_project_flags(p)
    p.add_argument("--classifier", required=True, help="name of the classifier in the project")
    p.add_argument("--image", action="append", help="image to process (repeat; default: every image)")
    p.add_argument("--output", choices=["measurements", "objects", "map", "probabilities", "overlay"],
                   help="what to write (default: measurements)")
    p.add_argument("--scope", choices=["annotations", "selected", "image"],
                   help=_doc("scope"))
    p.add_argument("--tile-size", type=int, help="tile size in pixels (default: the classifier's)")
    p.add_argument("--overlap", type=int, help=_doc("overlap"))
    p.add_argument("--batch-size", type=int, help=f"tiles per batch (default {fields['batch_size'].default})")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"],
                   help="where the model runs (default auto: a CUDA GPU, then Apple MPS, then the CPU)")
    p.add_argument("--backend", choices=["auto", "torch", "onnx"],
                   help="PyTorch or ONNX Runtime (default auto: PyTorch on a GPU, else ONNX Runtime)")
    p.add_argument("--precision", choices=["bf16", "fp16", "fp32"], help=_doc("precision"))
    p.add_argument("--object-type", choices=["detection", "annotation"],
                   help="QuPath object type of output objects (default detection; annotation to edit them)")
    p.add_argument("--min-object-area", type=float, help="µm² when calibrated, else px² (default: 9 pixels at the "
                   "classifier's resolution)")
    p.add_argument("--min-hole-area", type=float, help="µm² when calibrated, else px²")
    p.add_argument("--simplify", type=float, help="polygon simplification tolerance in pixels")
    p.add_argument("--config", help="JSON file of inference settings")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="one inference setting (repeat)")
    add_progress_flags(p)
    p.set_defaults(func=cmd_apply)
