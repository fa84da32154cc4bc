"""The ``dlpixel`` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._version import __version__

if TYPE_CHECKING:  # imported where used: ``dlpixel --help`` loads neither pydantic models nor numpy
    from ..classifiers import store
    from ..config import TrainingConfig
from ..errors import Cancelled, ConfigError, DataError, DlpixelError
from .common import (
    add_progress_flags,
    add_project_flags,
    cancel_on_file,
    cancel_on_sigint,
    listener_for,
    plain_help,
    settings_layers,
)


def training_settings(args: argparse.Namespace) -> tuple[TrainingConfig, str | None]:
    from ..classifiers import store
    from ..config import TrainingConfig
    from ..config.layers import build_config

    """The training settings of ``settings_layers``, and the default name when they come from another model."""
    default_name = store.retrain_name(args.from_model) if getattr(args, "from_model", None) else None
    return build_config(TrainingConfig, *settings_layers(args), source="settings"), default_name


def cmd_train(args: argparse.Namespace) -> int:
    from ..projects import open_project
    from ..training.run import train_classifier

    if args.help_settings:
        print(settings_help())
        return 0
    if not args.project:
        raise ConfigError("--project is required")
    cfg, default_name = training_settings(args)
    if (args.gpus or 1) > 1 and "WORLD_SIZE" not in os.environ:
        from ..training.distributed import launch, without_gpus_flag

        if cfg.method == "features":
            raise ConfigError(f"--gpus trains a U-Net on several GPUs; method '{cfg.method}' trains in one process: "
                              "leave --gpus out")
        # With method auto every process decides the same way: several GPUs train a U-Net (training.method).
        return launch(args.gpus, without_gpus_flag(args.argv))
    name = args.name or default_name
    if not name:
        raise ConfigError("--name is required (letters, digits, '_' and '-')")
    listener = listener_for(args)
    cancel = cancel_on_sigint()
    project = open_project(args.project, qupath_dir=args.qupath)
    try:
        entry = train_classifier(project, name, cfg, args.image or None, overwrite=args.overwrite,
                                 listeners=[listener], cancel=cancel, match_classes=bool(args.from_model),
                                 init_weights_from=args.init_weights_from)
    finally:
        getattr(listener, "close", lambda: None)()
        project.close()
    if args.events == "jsonl" or entry is None:  # None: a DDP process other than rank 0, which saves nothing
        return 0
    _print_result(entry, saved_line=args.quiet)
    return 0


def _print_result(entry: store.ClassifierEntry, saved_line: bool = True) -> None:
    """The result of ``train``; ``saved_line`` False when the progress display has already said where it went."""
    meta = entry.metadata
    r = meta.results
    if saved_line:
        print(f"classifier '{entry.name}' saved to {entry.path}")
    if r:
        ious = ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} n/a" for k, v in r.per_class_iou.items())
        stopped = "; stopped by the user" if r.stopped_by_user else ""
        print(f"validation mean IoU {r.mean_iou:.3f} at epoch {r.best_epoch}/{r.epochs_run}{stopped} ({ious})")


def settings_help() -> str:
    from ..config import TrainingConfig

    """Every training setting with its default and meaning, from the settings model itself."""
    lines = ["Training settings (--set key=value; nested keys with dots):"]

    def walk(model: type, prefix: str, defaults: Any) -> None:
        for key, field in model.model_fields.items():
            value = getattr(defaults, key)
            sub = getattr(field.annotation, "model_fields", None)
            if sub is not None:
                walk(field.annotation, f"{prefix}{key}.", value)
                continue
            shown = json.dumps(value.value if hasattr(value, "value") else value, default=str)
            doc = plain_help(field.description)
            lines.append(f"  {prefix}{key} = {shown}" + (f"    {doc}" if doc else ""))

    walk(TrainingConfig, "", TrainingConfig())
    return "\n".join(lines)


def cmd_models(args: argparse.Namespace) -> int:
    from ..classifiers import store
    from ..projects import project_root

    root = project_root(args.project)
    if not root.is_dir():
        raise DataError(f"project not found: {root}; pass a QuPath project (project.qpproj) or a folder project")
    if args.action == "list":
        entries = store.list_classifiers(root)
        if not entries:
            print(f"no classifiers in {store.classifiers_dir(root)}")
        for e in entries:
            r = e.metadata.results
            miou = f"{r.mean_iou:.3f}" if r else "-"
            print(f"{e.name:32s} {e.metadata.created:25s} {e.metadata.backbone or e.metadata.architecture:20s} "
                  f"mIoU {miou}  classes {', '.join(e.metadata.class_names)}")
        return 0
    if not args.name and args.action != "import":
        raise ConfigError(f"`dlpixel models {args.action}` needs a classifier NAME")
    if args.action == "show":
        from ..report.page import summary_text

        entry = store.load_classifier(root, args.name)
        if args.json:
            print(entry.metadata.model_dump_json(indent=2))
        else:
            print(summary_text(entry.metadata, entry.path))
        if args.open:
            import webbrowser

            report = entry.path / store.REPORT
            if not report.exists():
                raise ConfigError(f"'{args.name}' has no {store.REPORT} in {entry.path}; retrain it to get one")
            webbrowser.open(report.resolve().as_uri())
        return 0
    if args.action == "delete":
        path = store.load_classifier(root, args.name).path
        if not args.yes and not _confirm(f"delete classifier '{args.name}' ({path}) for good? [y/N] "):
            print("nothing deleted")
            return 1
        print(f"deleted {store.delete_classifier(root, args.name)}")
        return 0
    if args.action == "export":
        out = Path(args.file or f"{args.name}.zip")
        if out.exists() and not args.overwrite:
            raise ConfigError(f"{out} exists; add --overwrite to replace it, or choose another --file")
        print(f"exported to {store.export_classifier(root, args.name, out)}")
        return 0
    if args.action == "import-onnx":
        return _import_onnx(args, root)
    if args.action == "import":
        if not args.file:
            raise ConfigError("`dlpixel models import` needs --file ZIP")
        print(f"imported to {store.import_classifier(root, Path(args.file), args.name, args.overwrite)}")
        return 0
    raise ConfigError(f"unknown models action {args.action}")


def _confirm(question: str) -> bool:
    """A yes from the person at the terminal; with no terminal to ask, a one-line error naming ``--yes``."""
    if not sys.stdin.isatty():
        raise ConfigError("`dlpixel models delete` asks before deleting, and there is no terminal to ask: add --yes")
    try:
        return input(question).strip().lower() in ("y", "yes")
    except EOFError:
        return False


def _import_onnx(args: argparse.Namespace, root: Path) -> int:
    from ..classifiers.onnx_import import import_onnx
    from ..config import NormalizationConfig
    from ..config.layers import build_config, parse_overrides

    missing = [flag for flag, value in (("--file", args.file), ("--classes", args.classes),
                                        ("--channels", args.channels), ("--tile-size", args.tile_size)) if not value]
    if missing:
        raise ConfigError(f"`dlpixel models import-onnx NAME` needs {', '.join(missing)}")
    norm = build_config(NormalizationConfig, parse_overrides(args.set or []).get("normalization", {}),
                        source="normalization")
    entry = import_onnx(root, args.name, Path(args.file), [c.strip() for c in args.classes.split(",")],
                        [c.strip() for c in args.channels.split(",")], args.tile_size, args.downsample, norm,
                        args.outputs, overwrite=args.overwrite)
    print(f"imported '{entry.name}' to {entry.path}")
    return 0


def _reply(payload: dict[str, Any], code: int) -> int:
    print(json.dumps(payload, default=str), flush=True)
    return code


def cmd_request(args: argparse.Namespace) -> int:
    """Run one JSON request (from a file or stdin); with ``--events jsonl`` the reply is the last line. Whatever the
    input, the reply is one JSON object: the result, or ``ok: false`` with a one-line error."""
    from ..requests import handle_request

    def failed(message: str, code: int = 2) -> int:
        print(f"error: {message}", file=sys.stderr)
        return _reply({"event": "result", "ok": False, "error": message}, code)

    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    except (OSError, UnicodeDecodeError) as err:
        return failed(f"cannot read the request file {args.file}: {getattr(err, 'strerror', None) or err}")
    try:
        request = json.loads(text)
    except json.JSONDecodeError as err:
        return failed(f"the request is not valid JSON: {err}")
    except RecursionError:
        return failed("the request is nested too deeply; send a flat JSON object with an 'action'")
    listener = listener_for(args)
    cancel = cancel_on_sigint()
    cancel_on_file(cancel)
    try:
        result = handle_request(request, {}, [listener], cancel)
    except DlpixelError as err:
        getattr(listener, "close", lambda: None)()
        return failed(str(err))
    except (OSError, RecursionError, MemoryError) as err:
        getattr(listener, "close", lambda: None)()
        return failed(system_error(err))
    except KeyboardInterrupt:
        getattr(listener, "close", lambda: None)()
        return failed("interrupted; nothing was written", 130)
    except Exception as err:  # noqa: BLE001 - the Groovy helper must always get a reply to show
        getattr(listener, "close", lambda: None)()
        return failed(f"internal error ({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''});"
                      " please report it with the request", 1)
    getattr(listener, "close", lambda: None)()
    return _reply({"event": "result", "ok": True, "result": result}, 0)


def system_error(err: BaseException) -> str:
    """One line for an error of the system (disk, permissions, memory) with what to do about it."""
    import errno

    if isinstance(err, RecursionError):
        return "the input is nested too deeply (JSON or GeoJSON); flatten it"
    if isinstance(err, MemoryError):
        return "out of memory; use a smaller tile_size or batch_size, or fewer images at a time"
    assert isinstance(err, OSError)
    where = f" ({err.filename})" if err.filename else ""
    advice = {errno.ENOSPC: "free disk space", errno.EDQUOT: "free disk space", errno.EACCES: "make it writable",
              errno.EPERM: "make it writable", errno.EROFS: "the file system is read-only: use a writable place",
              errno.ENOENT: "check the path", errno.ENOTDIR: "a file stands where a folder is needed"}
    return f"{err.strerror or err}{where}; {advice.get(err.errno or 0, 'check the path and the disk')}"


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    if args.epochs is not None and args.epochs < 1:
        raise ConfigError(f"--epochs must be at least 1 (got {args.epochs})")
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create the demo folder {out} ({err.strerror or err}); choose another "
                          "--out") from None
    return run_demo(out, epochs=args.epochs, listener=listener_for(args), cancel=cancel_on_sigint(),
                    method=args.method)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dlpixel", description="Deep-learning pixel classifiers for QuPath: train, apply, script.")
    parser.add_argument("--version", action="version", version=f"dlpixel {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="train (and apply) a classifier on a bundled sample image; no QuPath needed")
    p.add_argument("--out", default="dlpixel-demo", help="folder for the demo project and its results")
    p.add_argument("--method", choices=["auto", "unet", "features"], default=None,
                   help="what to train (default auto: a features classifier on the demo's strokes; unet: a small "
                   "U-Net)")
    p.add_argument("--epochs", type=int, default=None, help="U-Net training epochs (default: the demo's own)")
    add_progress_flags(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="train a pixel classifier on a project's annotations",
                       description="Train a pixel classifier on a project's classified annotations. With the default "
                       "method auto, annotations that label at most 400,000 pixels (strokes, small regions) train a "
                       "features classifier in seconds and more train a U-Net; --set method=unet or method=features "
                       "chooses. --help-settings lists every setting.")
    add_project_flags(p, required=False)
    p.add_argument("--name", help="classifier name (letters, digits, '_' and '-')")
    p.add_argument("--image", action="append", help="image to train on (repeat; default: every annotated image)")
    p.add_argument("--config", help="JSON file of settings")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="one setting (repeat), e.g. epochs=20")
    p.add_argument("--from-model", metavar="NAME", help="start from every setting of this classifier (not its "
                   "weights: see --init-weights-from)")
    p.add_argument("--init-weights-from", metavar="NAME",
                   help="fine-tune a U-Net: the model starts from this classifier's trained weights (same backbone "
                   "and input channels; with other classes its output layer starts afresh); method auto then trains "
                   "a U-Net")
    p.add_argument("--overwrite", action="store_true", help="replace an existing classifier of the same name")
    p.add_argument("--help-settings", action="store_true", help="list every setting with its default")
    p.add_argument("--gpus", type=int, help="train a U-Net on N GPUs with torch DDP, one process each (torchrun; "
                   "method auto then trains a U-Net); batch_size is per GPU (docs/SCALING.md)")
    add_progress_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("models", help="list, show, delete, export or import classifiers",
                       description="The classifiers of a project (<project>/classifiers/dl/). "
                       "`dlpixel models ACTION --help` shows each action's options.")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    m = actions.add_parser("list", help="every classifier with its date, backbone, mean IoU and classes")
    add_project_flags(m)
    m = actions.add_parser("show", help="a classifier's summary: settings that differ from the defaults, results")
    m.add_argument("name", metavar="NAME", help="classifier name")
    add_project_flags(m)
    m.add_argument("--json", action="store_true", help="print the full metadata as JSON")
    m.add_argument("--open", action="store_true", help="open the training report (report.html) in a web browser")
    m = actions.add_parser("delete", help="delete a classifier (asks first)")
    m.add_argument("name", metavar="NAME", help="classifier name")
    add_project_flags(m)
    m.add_argument("--yes", action="store_true", help="delete without asking (scripts)")
    m = actions.add_parser("export", help="pack a classifier into a zip file that `models import` reads")
    m.add_argument("name", metavar="NAME", help="classifier name")
    add_project_flags(m)
    m.add_argument("--file", help="zip file to write (default: NAME.zip in the current folder)")
    m.add_argument("--overwrite", action="store_true", help="replace the zip file if it exists")
    m = actions.add_parser("import", help="add a classifier from a zip file of `models export`, optionally renamed",
                           description="Add a classifier from a zip file that `dlpixel models export` wrote. It keeps "
                           "its exported name unless NAME gives a new one (use that when the project already has a "
                           "classifier of that name and you want to keep both).")
    m.add_argument("name", nargs="?", metavar="NAME", help="name in this project (default: the exported name)")
    add_project_flags(m)
    m.add_argument("--file", required=True, help="zip file written by `dlpixel models export`")
    m.add_argument("--overwrite", action="store_true", help="replace a classifier of the same name")
    m = actions.add_parser("import-onnx", help="add an external NCHW segmentation model (ONNX) as a classifier")
    m.add_argument("name", metavar="NAME", help="classifier name in this project")
    add_project_flags(m)
    m.add_argument("--file", required=True, help="the ONNX file")
    m.add_argument("--overwrite", action="store_true", help="replace a classifier of the same name")
    m.add_argument("--classes", required=True, help="class names in the model's output order, comma-separated")
    m.add_argument("--channels", required=True,
                   help="image channel names in the model's input order, comma-separated")
    m.add_argument("--tile-size", type=int, required=True, help="tile size the model runs on (multiple of 32)")
    m.add_argument("--downsample", type=float, default=1.0, help="resolution the model expects (default 1)")
    m.add_argument("--outputs", choices=["logits", "probabilities"], default="logits",
                   help="what the model returns per class (default logits)")
    m.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="normalization settings, e.g. normalization.strategy=fixed_range")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("request", help="run one JSON request (used by QuPath's Groovy helper)")
    p.add_argument("file", nargs="?", default="-", help="request file, or - for stdin")
    add_progress_flags(p)
    p.set_defaults(func=cmd_request)

    from . import apply as inference_cli
    from . import batch, bench, script
    from . import qupath as qupath_cli

    for module in (inference_cli, script, qupath_cli, bench, batch):
        module.register_cli(sub)
    p = sub.add_parser("qupath", help="QuPath: install the scripts and menu, launch QuPath with the bridge")
    qsub = p.add_subparsers(dest="qupath_command", required=True)
    qupath_cli.register_install_cli(qsub)
    qupath_cli.register_qupath_cli(qsub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # The output went to a command that stopped reading (`| head`): not an error; nothing more to print.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Cancelled as err:
        print(str(err), file=sys.stderr)
        return 130
    except DlpixelError as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; nothing was written", file=sys.stderr)
        return 130
    except (OSError, RecursionError, MemoryError) as err:
        if args.debug:
            raise
        print(f"error: {system_error(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
