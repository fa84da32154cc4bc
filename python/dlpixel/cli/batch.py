"""``dlpixel batch``: ``dlpixel apply`` over many images as resumable per-image tasks, on local workers or Ray."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .common import cancel_on_sigint, listener_for


class SlideBar:
    """A progress bar over slides in front of the usual listener (workers' tile bars stay in their processes)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.progress: Any = None
        self.task: Any = None

    def __call__(self, event: dict[str, Any]) -> None:
        if event["event"] == "slides" and type(self.inner).__name__ == "RichProgress":
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            if self.progress is None:
                self.progress = Progress(TextColumn("slides "), BarColumn(), MofNCompleteColumn(),
                                         TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                                         console=self.inner.console)
                self.progress.start()
                self.task = self.progress.add_task("slides", total=event["total"], info="")
            info = f"{event['failed']} failed" if event["failed"] else ""
            self.progress.update(self.task, completed=event["done"], info=info)
            return
        if event["event"] == "done" and self.progress is not None:
            self.progress.stop()
            self.progress = None
        self.inner(event)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        getattr(self.inner, "close", lambda: None)()


def cmd_batch(args: argparse.Namespace) -> int:
    from ..batch import run_batch
    from ..projects import open_project
    from .apply import inference_settings

    cfg = inference_settings(args)
    listener = SlideBar(listener_for(args))
    cancel = cancel_on_sigint()
    project = open_project(args.project, qupath_dir=args.qupath)
    try:
        report = run_batch(project, args.classifier, cfg, args.image or None, engine=args.engine,
                           workers=args.workers, ray_address=args.ray_address,
                           run_dir=Path(args.run_dir) if args.run_dir else None, full_hash=args.full_hash,
                           listeners=[listener], cancel=cancel)
    finally:
        listener.close()
        project.close()
    if report.get("nothing_to_do"):
        if args.events != "jsonl":
            print(report["message"])
        return 0
    totals = report["totals"]
    return 1 if totals["failed"] or totals["locked"] or totals["done"] + totals["skipped"] < len(report["slides"]) \
        else 0


class _AsBatch:
    """Lets ``apply``'s ``register_cli`` declare its flags on the ``batch`` parser, so both take the same ones."""

    def __init__(self, sub: Any) -> None:
        self.sub = sub
        self.parser: Any = None

    def add_parser(self, name: str, **kw: Any) -> Any:
        self.parser = self.sub.add_parser(
            "batch", help="apply a classifier to many images as resumable per-image tasks (local workers or Ray)")
        return self.parser


def register_cli(sub: Any) -> None:
    from . import apply

    wrapper = _AsBatch(sub)
    apply.register_cli(wrapper)
    p = wrapper.parser
    g = p.add_argument_group("batch")
    g.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local worker processes (default) or Ray tasks")
    g.add_argument("--workers", type=int,
                   help="worker processes (default: one per GPU, else 1); with --engine ray and no --ray-address, "
                        "the CPUs of the local Ray")
    g.add_argument("--ray-address", help="join this Ray cluster (e.g. auto or ray://head:10001); default: a local Ray")
    g.add_argument("--run-dir", help="run folder: plan, task states, locks, report "
                                     "(default <project>/batch/<classifier>.<output>)")
    g.add_argument("--full-hash", action="store_true",
                   help="hash whole image files (default: size, mtime and three 64 KiB samples)")
    p.set_defaults(func=cmd_batch)
