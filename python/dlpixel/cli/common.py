"""What every ``dlpixel`` subcommand shares: progress flags, the project flags, Ctrl-C, and settings layering.

Nothing below the command line imports this module.
"""

from __future__ import annotations

import _thread
import argparse
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..runtime.events import CancelToken


def listener_for(args: argparse.Namespace) -> Any:
    from .progress import make_listener

    mode = "jsonl" if getattr(args, "events", None) == "jsonl" else ("quiet" if getattr(args, "quiet", False)
                                                                     else "bars")
    return make_listener(mode)


def cancel_on_sigint() -> CancelToken:
    """The first Ctrl-C (or SIGTERM) asks the run to stop cleanly; a second one stops at once."""
    token = CancelToken()

    def handler(signum: int, frame: Any) -> None:
        if token.cancelled:
            raise KeyboardInterrupt
        token.cancel()
        print("\nstopping… (training ends after this epoch and saves the best one so far; Ctrl-C again stops at "
              "once and writes nothing)", file=sys.stderr)

    signal.signal(signal.SIGINT, handler)
    # QuPath's Cancel ends a helper process with Process.destroy(), a SIGTERM: the same clean stop as a Ctrl-C.
    signal.signal(signal.SIGTERM, handler)
    return token


CANCEL_FILE_ENV = "DLPIXEL_CANCEL_FILE"
"""A file whose appearance cancels the run, like a Ctrl-C: how the Groovy helper's Cancel reaches a ``dlpixel
request`` process on every platform (a file that says ``abort`` counts as a second Ctrl-C)."""


def cancel_on_file(token: CancelToken, interval: float = 0.2) -> None:
    """Watch ``$DLPIXEL_CANCEL_FILE`` (when set) in a daemon thread and cancel ``token`` when the file appears."""
    path = os.environ.get(CANCEL_FILE_ENV)
    if not path:
        return

    def watch() -> None:
        while True:
            time.sleep(interval)
            try:
                text = Path(path).read_text(encoding="utf-8", errors="replace").strip()
            except OSError:
                continue
            if not token.cancelled:
                token.cancel()
            if text == "abort":
                _thread.interrupt_main()
                return

    threading.Thread(target=watch, name="dlpixel-cancel-file", daemon=True).start()


def plain_help(text: str | None) -> str:
    """A setting's description as terminal help: one line, ``code`` marks dropped, "None" said as "unset"."""
    text = re.sub(r"``([^`]*)``", r"\1", " ".join((text or "").split()))
    return re.sub(r"\bNone\b", "unset", text)


def add_progress_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="print warnings and the result only")
    p.add_argument("--events", choices=["bars", "jsonl"], default="bars",
                   help="progress as bars (default) or one JSON object per line on stdout")


def add_project_flags(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--project", required=required,
                   help="QuPath project (project.qpproj or its folder) or a folder of images with GeoJSON")
    p.add_argument("--qupath", help="QuPath installation or folder of jars (default: $QUPATH_HOME, then a search)")


def settings_layers(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Settings from ``--from-model`` (a classifier's training settings), then ``--config``, then ``--set``; later
    layers win. Shared by ``train``, ``apply`` and ``script``."""
    from ..classifiers import store
    from ..projects import project_root

    from_model = getattr(args, "from_model", None)
    if from_model and not getattr(args, "project", None):
        raise ConfigError("--from-model needs --project: the classifier is read from the project's classifiers")
    root = project_root(args.project) if from_model else None
    return store.layered_settings(root, from_model, getattr(args, "config", None), getattr(args, "set", None) or [])
