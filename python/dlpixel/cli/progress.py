"""Show progress events in a terminal: rich progress bars, quiet lines, or one JSON object per line."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..runtime.events import Event


class JsonLines:
    """``--events jsonl``: every event as one JSON object per line on stdout (read by the Groovy helper)."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stdout

    def __call__(self, event: Event) -> None:
        if event["event"] == "batch":
            return
        self.stream.write(json.dumps(event, default=str) + "\n")
        self.stream.flush()


class Quiet:
    """``--quiet``: warnings only."""

    def __init__(self) -> None:
        self.console = Console(stderr=True, soft_wrap=True)

    def __call__(self, event: Event) -> None:
        if event["event"] == "log" and event.get("level") == "warning":
            self.console.print(f"[yellow]warning:[/] {event['message']}")

    def close(self) -> None:
        pass


class RichProgress:
    """Progress bars for tile extraction, epochs and inference tiles, with the numbers people watch."""

    def __init__(self) -> None:
        self.console = Console(stderr=True, soft_wrap=True)
        self.progress = self._new_progress()
        self.tasks: dict[str, Any] = {}
        self.started = False
        self.t0 = time.perf_counter()

    def _new_progress(self) -> Progress:
        return Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )

    def _task(self, key: str, description: str, total: int) -> Any:
        if not self.started:
            self.progress.start()
            self.started = True
        if key not in self.tasks:
            self.tasks[key] = self.progress.add_task(description, total=total, info="")
        return self.tasks[key]

    def __call__(self, event: Event) -> None:
        kind = event["event"]
        if kind == "stage":
            self.console.print(f"[bold]{event.get('message', event.get('stage'))}[/]")
        elif kind == "log":
            style = "yellow" if event.get("level") == "warning" else "dim"
            self.console.print(f"[{style}]{event['message']}[/]")
        elif kind == "extract":
            task = self._task("extract", "tiles  ", event["total"])
            self.progress.update(task, completed=event["done"], total=event["total"])
        elif kind == "batch":
            task = self._task("batch", "batches", event["batches"])
            self.progress.update(task, completed=event["batch"], total=event["batches"])
        elif kind == "epoch":
            task = self._task("epoch", "epochs ", event["epochs"])
            best = event["best_metric"]
            info = (
                f"loss {event['train_loss']:.3f}/{event['val_loss']:.3f}  mIoU {event['mean_iou']:.3f}  "
                f"best {best:.3f} @{event['best_epoch']}  wait {event['epochs_without_improvement']}/"
                f"{event['patience']}"
            )
            self.progress.update(task, completed=event["epoch"], info=info)
        elif kind == "tiles":
            task = self._task(f"tiles-{event.get('image', '')}", f"{event.get('image', 'tiles')[:24]}",
                              event["total"])
            rate = event.get("tiles_per_second")
            self.progress.update(task, completed=event["done"], total=event["total"],
                                 info=f"{rate:.1f} tiles/s" if rate else "")
        elif kind == "done":
            self.close()
            self.console.print(f"[green]{event.get('message', 'done')}[/]")

    def close(self) -> None:
        if self.started:
            self.progress.stop()
            self.progress = self._new_progress()
            self.started = False
            self.tasks.clear()


def make_listener(mode: str) -> Any:
    """``bars`` (default), ``quiet`` or ``jsonl``."""
    if mode == "jsonl":
        return JsonLines()
    if mode == "quiet":
        return Quiet()
    return RichProgress()
