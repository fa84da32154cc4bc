"""Progress events of a run and the token that cancels it.

An event is a plain dict with an ``event`` key (``stage``, ``extract``, ``batch``, ``epoch``, ``log``, ``done``)
and JSON-serialisable fields, so the CLI's progress bars, ``--events jsonl`` and the Groovy helper all read the
same stream. A listener is any callable taking one event; it may cancel the run through the ``CancelToken``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import Cancelled

Event = dict[str, Any]
Listener = Callable[[Event], None]


class CancelToken:
    """Set from any thread (a listener, a signal handler, a GUI button); the run stops at its next check."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled("cancelled; nothing was written")


class Emitter:
    """Sends events to every listener."""

    def __init__(self, listeners: Iterable[Listener] = ()) -> None:
        self.listeners = list(listeners)

    def __call__(self, event: str, **fields: Any) -> None:
        payload: Event = {"event": event, **fields}
        if PAUSE_ENV in os.environ:
            pause_point(f"{event}:{fields['stage']}" if event == "stage" else event)
        for listener in self.listeners:
            listener(payload)

    def log(self, message: str, level: str = "info") -> None:
        self("log", level=level, message=message)


PAUSE_ENV = "DLPIXEL_PAUSE_AT"
"""Fault-injection hook for tests: a run whose ``$DLPIXEL_PAUSE_AT`` names a pause point (``stage:saving``,
``epoch``, ``swap``, ...) creates the file ``$DLPIXEL_PAUSE_FILE`` there and waits until it is deleted, so a test
can kill or interrupt it at exactly that point."""


_PAUSED: set[str] = set()


def pause_point(name: str) -> None:
    """Wait here while ``$DLPIXEL_PAUSE_AT`` names this point and ``$DLPIXEL_PAUSE_FILE`` exists (tests only)."""
    if os.environ.get(PAUSE_ENV) != name or name in _PAUSED:
        return
    marker = os.environ.get("DLPIXEL_PAUSE_FILE")
    if not marker:
        return
    _PAUSED.add(name)  # once per process: the first time the point is reached
    with open(marker, "w") as f:
        f.write(str(os.getpid()))
    while os.path.exists(marker):
        time.sleep(0.02)
