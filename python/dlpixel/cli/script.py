"""``dlpixel script train|apply``: print the Groovy that QuPath runs ("Copy as Script")."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..config import InferenceConfig, TrainingConfig
from ..config.layers import build_config
from ..qupath.scripting import _choices, apply_script, training_script
from .common import settings_layers


def script_from_args(args: argparse.Namespace) -> str:
    """The script that ``dlpixel script train|apply`` prints for parsed arguments."""
    if args.kind == "train":
        config = build_config(TrainingConfig, *settings_layers(args), source="settings")
        return training_script(args.project, args.name, args.image or [], config, overwrite=args.overwrite,
                               helper=args.helper)
    if args.project:
        from ..classifiers import store
        from ..projects import project_root

        store.load_classifier(project_root(args.project), args.classifier)  # a one-line error when there is none
    flags = {k: v for k, v in (("output", args.output), ("scope", args.scope)) if v is not None}
    config = build_config(InferenceConfig, *settings_layers(args), flags, source="settings")
    return apply_script(args.project, args.classifier, args.image or [], config, helper=args.helper)


def _run(args: argparse.Namespace) -> int:
    text = script_from_args(args)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--project", help="project.qpproj or a folder project (default: the project open in QuPath)")
    parser.add_argument("--image", action="append", metavar="NAME", help="an image by name (repeatable)")
    parser.add_argument("--config", metavar="FILE", help="JSON file of settings")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="one setting (repeatable)")
    parser.add_argument("--helper", metavar="PATH", help="where the script finds DLPixel.groovy")
    parser.add_argument("--out", metavar="FILE", help="write the script here instead of standard output")
    parser.set_defaults(func=_run)


def register_cli(subparsers: Any) -> None:
    """Add ``dlpixel script train|apply`` to the ``dlpixel`` command; each sets ``func(args) -> exit code``."""
    script = subparsers.add_parser("script", help="print a Groovy script for QuPath (\"Copy as Script\")")
    kinds = script.add_subparsers(dest="kind", required=True)
    train = kinds.add_parser("train", help="a script that trains a classifier with the given settings")
    train.add_argument("--name", required=True, help="classifier name")
    train.add_argument("--from-model", metavar="NAME", help="start from the settings a saved classifier used")
    train.add_argument("--overwrite", action="store_true", help="the script replaces a classifier of that name")
    _common(train)
    apply = kinds.add_parser("apply", help="a script that applies a classifier")
    apply.add_argument("--classifier", required=True, help="classifier name")
    apply.add_argument("--output", choices=_choices(InferenceConfig.model_fields["output"].annotation),
                       help="what the script's apply writes (default measurements)")
    apply.add_argument("--scope", choices=_choices(InferenceConfig.model_fields["scope"].annotation),
                       help="where it computes (default annotations; the whole image for map, probabilities and "
                       "overlay)")
    _common(apply)
